"""Storage I/O shared by every part of featup: fsspec reads and atomic writes, storage roots, fault triage."""

from featup.io.faults import TransientError, describe, is_transient
from featup.io.files import (
    StorageOptions,
    atomic_write,
    exists,
    filesystem,
    is_local,
    join_url,
    local_path,
    open_read,
    read_bytes,
    write_bytes,
)
from featup.io.roots import StorageRoot, as_root

__all__ = [
    "StorageOptions",
    "StorageRoot",
    "TransientError",
    "as_root",
    "atomic_write",
    "describe",
    "exists",
    "filesystem",
    "is_local",
    "is_transient",
    "join_url",
    "local_path",
    "open_read",
    "read_bytes",
    "write_bytes",
]
