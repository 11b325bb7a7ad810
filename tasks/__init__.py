"""Prefect tasks: thin wrappers adding retries, tags, logging and caching to featup library calls.

The precompute tasks pass storage roots, options and reports, never features: those live in shards and
feature stores, and result persistence is off. (``read_samples`` hands decoded evaluation images to the
flow in memory.)
"""
