import subprocess
import sys
import time
from pathlib import Path

from tasks.locks import ProcessAwareLockManager, host_lock, lock_key

REPO = Path(__file__).resolve().parents[2]


def test_lock_keys_are_stable_distinct_and_file_safe():
    key = lock_key("shard", "s3://bucket/a store/with|pipes", "v1", 3)
    assert key == lock_key("shard", "s3://bucket/a store/with|pipes", "v1", 3)
    assert key != lock_key("shard", "s3://bucket/a store/with|pipes", "v1", 4)
    assert key.startswith("featup-") and key.replace("-", "").isalnum() and len(key) < 64


def _hold(lock_dir: Path, seconds: float, marker: Path) -> subprocess.Popen:
    code = ("import sys, time; from tasks.locks import host_lock\n"
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
