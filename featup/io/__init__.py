"""Storage and network I/O concerns shared by the data readers, the feature store and the pipeline's callers."""

from featup.io.faults import TransientError, describe, is_transient

__all__ = ["TransientError", "describe", "is_transient"]
