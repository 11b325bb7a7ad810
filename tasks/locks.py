"""Shard locks for Prefect's SERIALIZABLE cache isolation that survive a killed run.

Prefect's ``FileSystemLockManager`` keeps a lock until its holder releases it or it expires, and the
task engine takes locks with no expiry: a run killed while holding one would make every later run
wait forever for that shard. This manager records the holding process in the lock file and treats a
lock whose process (on this host) is gone as released, so a re-run after a crash just proceeds.
Locks held on other hosts are never broken here; many hosts need a shared lock manager
(e.g. prefect-redis's) instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.locking.filesystem import FileSystemLockManager


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProcessAwareLockManager(FileSystemLockManager):
    """A FileSystemLockManager whose locks die with the process that took them."""

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        acquired = super().acquire_lock(key, holder, acquire_timeout, hold_timeout)
        if acquired:
            path = Path(self._lock_path_for_key(key))
            info = json.loads(path.read_bytes())
            path.write_text(json.dumps({**info, "pid": os.getpid(), "host": socket.gethostname()}))
        return acquired

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        try:
            info = self._get_lock_info(key, use_cache=use_cache)
        except ValueError:  # the file exists but its content is not written yet: a lock being taken
            return True
        if info and info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", 0))):
            Path(info["path"]).unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return super().is_locked(key, use_cache=use_cache)


def lock_key(*parts: object) -> str:
    """A lock (and cache) key for what ``parts`` identify, short and safe as a file name whatever URLs they hold."""
    return f"featup-{hashlib.sha256('|'.join(map(str, parts)).encode()).hexdigest()[:32]}"


@contextmanager
def host_lock(lock_dir: str | os.PathLike, *name: object) -> Iterator[None]:
    """Hold this host's lock on what ``name`` identifies while in the block; runs meeting on it wait for each other."""
    manager = ProcessAwareLockManager(lock_files_directory=Path(lock_dir))
    key = lock_key(*name)
    holder = f"{os.getpid()}-{uuid.uuid4().hex}"
    manager.acquire_lock(key, holder)
    try:
        yield
    finally:
        manager.release_lock(key, holder)
