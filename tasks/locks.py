"""Locks that make runs meeting on a shard (or on a store's creation) do it once: Prefect lock managers.

Two kinds, both Prefect's ``LockManager`` protocol:

- on one host (the default), lock files in a folder: ``ProcessAwareLockManager``, a
  ``FileSystemLockManager`` that records the holding process and treats a lock whose process is gone as
  released, so a re-run after a crash proceeds instead of waiting forever;
- across hosts, when a Redis URL is configured: prefect-redis's ``RedisLockManager``, with a lease
  (``LEASE_S``) renewed while the holder works, so a host that dies frees its locks within a lease.

A lock only keeps runs from doing the same work at once; whether a shard is done is always asked of
the feature store, inside the lock.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.locking.filesystem import FileSystemLockManager
from prefect.locking.protocol import LockManager
from prefect.logging import get_logger
from prefect_redis.locking import RedisLockManager

log = get_logger("featup.locks")
# A Redis lock outlives a dead holder by at most this long (shorter in fault drills, to wait less).
LEASE_S = float(os.environ.get("FEATUP_LOCK_LEASE_S", "60"))


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProcessAwareLockManager(FileSystemLockManager):
    """A FileSystemLockManager whose locks die with the process that took them.

    A lock file appears whole or not at all (written beside it, then hard-linked into place): Prefect's
    own manager creates it empty and writes it after, and a run killed between the two left an empty
    file that every later run failed to parse.
    """

    UNREADABLE_STALE_S = 5.0  # an unparsable lock file (an older writer killed mid-write) older than this is stale

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        self._ensure_lock_files_directory_exists()
        path = Path(self._lock_path_for_key(key))
        expiration = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=hold_timeout)
                      if hold_timeout is not None else None)
        body = json.dumps({"holder": holder, "expiration": expiration.isoformat() if expiration else None,
                           "pid": os.getpid(), "host": socket.gethostname()})
        while True:
            if self.is_locked(key) and not self.is_lock_holder(key, holder):
                if not self.wait_for_lock(key, acquire_timeout):
                    return False
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_text(body)
            try:
                os.link(tmp, path)  # atomic: fails if another holder's lock appeared meanwhile
            except FileExistsError:
                if acquire_timeout is not None and acquire_timeout <= 0:
                    return False
                continue
            finally:
                tmp.unlink(missing_ok=True)
            self._locks[key] = {"holder": holder, "expiration": expiration, "path": str(path)}
            return True

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        path = Path(self._lock_path_for_key(key))
        try:
            info = self._get_lock_info(key, use_cache=use_cache)
        except ValueError:  # unparsable: being written by a plain FileSystemLockManager, or left by a killed one
            try:
                stale = time.time() - path.stat().st_mtime > self.UNREADABLE_STALE_S
            except FileNotFoundError:
                return False
            if stale:
                path.unlink(missing_ok=True)
                self._locks.pop(key, None)
                return False
            return True
        if info and info.get("host") == socket.gethostname() and not process_alive(int(info.get("pid", 0))):
            Path(info["path"]).unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return super().is_locked(key, use_cache=use_cache)


def lock_key(*parts: object) -> str:
    """A lock (and cache) key for what ``parts`` identify, short and safe as a file name whatever URLs they hold."""
    return f"featup-{hashlib.sha256('|'.join(map(str, parts)).encode()).hexdigest()[:32]}"


class LeasedRedisLockManager(RedisLockManager):
    """prefect-redis's RedisLockManager whose locks are leases, pushed ahead by their holder (``renew_lock``)."""

    def renew_lock(self, key: str, holder: str) -> bool:
        """Push the lease of a held lock ``LEASE_S`` ahead; False if it was lost meanwhile."""
        lock = self._locks.get(self._lock_name_for_key(key))
        if lock is None or not self.is_lock_holder(key, holder):
            return False
        try:
            lock.reacquire()
        except Exception as exc:  # redis' LockNotOwnedError, or the server unreachable
            log.warning("could not renew lock %s: %s", key, exc)
            return False
        return True


def lock_manager(lock_dir: str | os.PathLike | None, redis_url: str | None = None) -> LockManager | None:
    """Redis locks shared by every host that reaches ``redis_url`` when given, else this host's lock files in
    ``lock_dir``; None when neither is given (no locking)."""
    if redis_url:
        return LeasedRedisLockManager(connection_url=redis_url)
    if lock_dir:
        return ProcessAwareLockManager(lock_files_directory=Path(lock_dir))
    return None


@contextmanager
def held(manager: LockManager | None, key: str) -> Iterator[None]:
    """Hold ``key`` in ``manager`` while in the block, waiting for another holder first; a Redis lease is renewed
    every third of ``LEASE_S`` until the block ends."""
    if manager is None:
        yield
        return
    holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
    renewing = hasattr(manager, "renew_lock")
    manager.acquire_lock(key, holder, hold_timeout=LEASE_S if renewing else None)
    stop = threading.Event()
    renewer = None
    if renewing:
        def renew() -> None:
            while not stop.wait(LEASE_S / 3):
                manager.renew_lock(key, holder)

        renewer = threading.Thread(target=renew, name=f"featup-lease-{key}", daemon=True)
        renewer.start()
    try:
        yield
    finally:
        stop.set()
        if renewer is not None:
            renewer.join()
        try:
            manager.release_lock(key, holder)
        except Exception as exc:  # an expired lease taken by another holder: nothing of ours to release
            log.warning("lock %s was not released cleanly: %s", key, exc)


@contextmanager
def host_lock(lock_dir: str | os.PathLike, *name: object, redis_url: str | None = None) -> Iterator[None]:
    """Hold the lock on what ``name`` identifies while in the block (this host's lock files in ``lock_dir``, or
    Redis when ``redis_url``); runs meeting on it wait for each other."""
    with held(lock_manager(lock_dir, redis_url), lock_key(*name)):
        yield
