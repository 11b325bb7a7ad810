"""Prefect tasks: thin wrappers adding retries, tags, logging and caching to featup library calls.

Tasks pass URLs and small dicts between each other, never big tensors, and keep result persistence
off: the data lives in shards and feature stores.
"""
