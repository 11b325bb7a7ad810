import subprocess
import sys
import time
from pathlib import Path

from featup_tasks.locks import ProcessAwareLockManager, host_lock, lock_key

REPO = Path(__file__).resolve().parents[2]


def test_lock_keys_are_stable_distinct_and_file_safe():
    key = lock_key("shard", "s3://bucket/a store/with|pipes", "v1", 3)
    assert key == lock_key("shard", "s3://bucket/a store/with|pipes", "v1", 3)
    assert key != lock_key("shard", "s3://bucket/a store/with|pipes", "v1", 4)
    assert key.startswith("featup-") and key.replace("-", "").isalnum() and len(key) < 64


def _hold(lock_dir: Path, seconds: float, marker: Path) -> subprocess.Popen:
    code = ("import sys, time; from featup_tasks.locks import host_lock\n"
            f"with host_lock({str(lock_dir)!r}, 'store', 'x'):\n"
            f"    open({str(marker)!r}, 'w').close(); time.sleep({seconds})\n"
            f"    open({str(marker)!r} + '.done', 'w').close()\n")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO)


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_host_lock_makes_a_second_holder_wait(tmp_path):
    marker = tmp_path / "held"
    holder = _hold(tmp_path / "locks", 3.0, marker)
    try:
        _wait_for(marker)
        start = time.monotonic()
        with host_lock(tmp_path / "locks", "store", "x"):
            waited = time.monotonic() - start
            assert Path(f"{marker}.done").exists(), "entered the block while the other process still held the lock"
        assert waited > 0.5
        with host_lock(tmp_path / "locks", "store", "y"):  # another name is another lock: no wait
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_whose_process_was_killed_is_released(tmp_path):
    marker = tmp_path / "held"
    holder = _hold(tmp_path / "locks", 600.0, marker)
    _wait_for(marker)
    manager = ProcessAwareLockManager(lock_files_directory=tmp_path / "locks")
    assert manager.is_locked(lock_key("store", "x"))
    holder.kill()
    holder.wait()
    assert not manager.is_locked(lock_key("store", "x"))
    with host_lock(tmp_path / "locks", "store", "x"):  # a re-run after the crash proceeds at once
        pass


# --- across hosts: prefect-redis's lock manager on a real redis-server ---

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402

from featup_tasks.locks import LeasedRedisLockManager, held, lock_manager  # noqa: E402


def _hold_on_host(lock_dir: Path, redis_url: str, marker: Path, seconds: float, lease_s: float = 60) -> subprocess.Popen:
    """Another "host": its own lock folder, the shared Redis."""
    code = ("import time; from featup_tasks.locks import held, lock_manager, lock_key\n"
            f"with held(lock_manager({str(lock_dir)!r}, {redis_url!r}), lock_key('shard', 'x', 0)):\n"
            f"    open({str(marker)!r}, 'w').close(); time.sleep({seconds})\n"
            f"    open({str(marker)!r} + '.done', 'w').close()\n")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                            env={**os.environ, "FEATUP_LOCK_LEASE_S": str(lease_s)})


def test_a_redis_url_chooses_prefects_redis_lock_manager_and_files_stay_the_default(tmp_path, redis_url):
    assert isinstance(lock_manager(tmp_path, redis_url), LeasedRedisLockManager)
    assert isinstance(lock_manager(tmp_path), ProcessAwareLockManager)
    assert lock_manager(None) is None


def test_hosts_with_their_own_lock_folders_wait_for_each_other_through_redis(tmp_path, redis_url):
    marker = tmp_path / "held"
    other_host = _hold_on_host(tmp_path / "host-a", redis_url, marker, 3.0)
    try:
        _wait_for(marker)
        start = time.monotonic()
        with held(lock_manager(tmp_path / "host-b", redis_url), lock_key("shard", "x", 0)):
            assert Path(f"{marker}.done").exists(), "both hosts held the shard at once"
        assert time.monotonic() - start > 0.5
        # file locks alone (no Redis) are per host: the other host's lock is not seen
        with held(lock_manager(tmp_path / "host-c"), lock_key("shard", "x", 0)):
            pass
    finally:
        other_host.kill()
        other_host.wait()


def test_a_dead_hosts_redis_lock_expires_after_its_lease_and_a_live_one_is_renewed(tmp_path, redis_url):
    marker = tmp_path / "held"
    # a live holder keeps its 2 s lease for 5 s by renewing it
    live = _hold_on_host(tmp_path / "host-a", redis_url, marker, 5.0, lease_s=2)
    _wait_for(marker)
    manager = lock_manager(tmp_path / "host-b", redis_url)
    key = lock_key("shard", "x", 0)
    time.sleep(3.5)
    assert manager.is_locked(key) and not Path(f"{marker}.done").exists()
    live.wait(timeout=60)
    marker.unlink()
    # a host that dies holding the lock frees it when its lease runs out
    dead = _hold_on_host(tmp_path / "host-a", redis_url, marker, 600.0, lease_s=2)
    _wait_for(marker)
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait()
    start = time.monotonic()
    with held(manager, key):
        waited = time.monotonic() - start
    assert waited < 10, f"waited {waited:.1f} s for a dead host's lock"


def test_a_lock_file_left_empty_by_a_killed_writer_does_not_stall_or_break_the_next_run(tmp_path):
    # Prefect's FileSystemLockManager creates the file, then writes it: a kill in between leaves it empty
    manager = ProcessAwareLockManager(lock_files_directory=tmp_path)
    key = lock_key("shard", "x", 0)
    empty = Path(manager._lock_path_for_key(key))
    tmp_path.mkdir(exist_ok=True)
    empty.touch()
    assert manager.is_locked(key), "a file being written is a lock being taken"
    os.utime(empty, (time.time() - 60, time.time() - 60))
    with host_lock(tmp_path, "shard", "x", 0):  # a minute old and unreadable: stale
        assert json.loads(empty.read_text())["pid"] == os.getpid(), "written whole, with its holder"
    assert not empty.exists()
