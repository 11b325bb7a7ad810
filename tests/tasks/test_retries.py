"""Which faults are retried: those that pass (network, throttling, 5xx), never those that stay (a missing file, a
full disk, a denied permission). Faults are produced by real parts where they can be on demand."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from featup.io import TransientError, describe, is_transient
from featup.store import ShardWriteError


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001  (the fault itself is the result)
        return exc
    raise AssertionError("no fault")


def test_an_s3_endpoint_that_is_down_is_transient_and_says_what_to_check():
    import s3fs

    fs = s3fs.S3FileSystem(key="k", secret="s", endpoint_url="http://127.0.0.1:9",
                           config_kwargs={"retries": {"max_attempts": 1}})
    exc = _raised(lambda: fs.cat_file("bucket/x"))
    assert type(exc).__name__ == "EndpointConnectionError"  # botocore's: no OSError, once not retried
    assert is_transient(exc)
    wrapped = _raised(lambda: _wrap(exc))
    assert is_transient(wrapped), "judged by the fault it wraps"
    assert "endpoint is up and reachable" in describe(wrapped)


def _wrap(exc):
    raise ShardWriteError("writing shard 0 failed") from exc


def test_missing_files_denied_permissions_and_full_disks_are_not(tmp_path):
    missing = _raised(lambda: open(tmp_path / "nope"))
    assert not is_transient(missing) and "check the path" in describe(missing)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert not is_transient(_raised(lambda: open(loop)))
    assert not is_transient(_raised(lambda: int("x")))
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here: the full-disk case needs one")
    try:
        full = _raised(lambda: Path(disk / "big").write_bytes(b"x" * 2**20))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC
    assert not is_transient(full) and "free space" in describe(full)


def test_throttling_and_5xx_are_transient_4xx_are_not():
    # moto cannot throttle or fail on demand: botocore's own error objects stand in for S3's answers
    from botocore.exceptions import ClientError

    def answer(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": code},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert is_transient(answer("SlowDown", 503)) and is_transient(answer("InternalError", 500))
    assert is_transient(answer("Throttling", 400)) and is_transient(answer("Anything", 502))
    assert not is_transient(answer("AccessDenied", 403)) and not is_transient(answer("NoSuchKey", 404))
    # s3fs turns them into OSErrors with these errno values
    assert is_transient(OSError(errno.EBUSY, "SlowDown")) and is_transient(OSError(errno.EREMOTEIO, "500"))
    assert is_transient(TransientError("reading s3://b/x failed"))


def test_io_retry_follows_the_classification():
    from prefect.states import Completed, Failed

    from featup_tasks.storage import io_retry

    def failed(exc):
        return Failed(data=exc)

    assert io_retry(None, None, failed(ConnectionRefusedError(errno.ECONNREFUSED, "refused")))
    assert not io_retry(None, None, failed(FileNotFoundError(errno.ENOENT, "no such folder")))
    assert not io_retry(None, None, failed(OSError(errno.ENOSPC, "No space left on device")))
    assert not io_retry(None, None, Completed())
