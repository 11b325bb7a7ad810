"""Shared fixtures: a real S3 API (moto_server on loopback), a real Redis (redis-server on loopback), storage
roots on local disk and S3, and a temporary Prefect API per test module."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """A ``moto_server`` process on 127.0.0.1: a real S3 API over HTTP, started and stopped by PID.

    With ``recording`` the server logs every request to that file, and :meth:`replay` re-applies the log
    to a restarted server — moto keeps state in memory only, so that is how a test gets a server that
    "comes back" with the objects it held before it was killed.
    """

    def __init__(self, port: int | None = None, recording: Path | None = None):
        if not MOTO_SERVER.exists():
            pytest.fail(f"{MOTO_SERVER} not found: install the test extras (pip install 'moto[server]')")
        self.port = port or _free_port()
        self.recording = recording
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        if self.recording is not None:
            env.update(MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(self.recording))
        self.proc = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode} (port {self.port} taken?)")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within 60 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server by its PID (SIGKILL simulates a crash)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def replay(self) -> None:
        """Re-apply the recorded requests (after a restart), restoring the buckets and objects."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/replay-recording", method="POST")
        urllib.request.urlopen(request, timeout=120).close()

    def storage_options(self) -> dict[str, Any]:
        """s3fs options for this server (no region_name: moto then rejects bucket creation)."""
        return {"key": "testing", "secret": "testing", "endpoint_url": self.endpoint}

    def new_bucket(self) -> str:
        """Create a fresh, uniquely named bucket; returns ``s3://<name>``."""
        import s3fs

        name = f"test-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(**self.storage_options()).mkdir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server() -> MotoServer:
    """One moto S3 server for the whole test session."""
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> str:
    """A fresh empty bucket for one test, as ``s3://name``."""
    return s3_server.new_bucket()


@pytest.fixture
def moto_factory(tmp_path: Path):
    """Start extra moto servers (e.g. recording ones for fault tests); all are stopped after the test."""
    servers: list[MotoServer] = []

    def make(port: int | None = None, recording: bool = False) -> MotoServer:
        server = MotoServer(port, tmp_path / f"moto-{len(servers)}.jsonl" if recording else None).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


class RedisServer:
    """A ``redis-server`` process on 127.0.0.1 (Debian's package), in memory only, started and stopped by PID."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            pytest.fail("redis-server not found: install Debian's redis-server (./run setup does, as root)")
        self.binary = binary
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
            try:
                if redis.Redis.from_url(self.url, socket_timeout=1).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on {self.url} within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """One Redis server for the whole test session: the lock service several "hosts" share."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    import redis

    redis.Redis.from_url(redis_server.url).flushdb()
    return redis_server.url


@dataclasses.dataclass(frozen=True)
class StorageRoot:
    """A place to write to: a URL plus the fsspec options that reach it."""

    kind: str
    url: str
    storage_options: dict[str, Any] | None

    def join(self, *parts: str) -> str:
        """``url/part/…``."""
        return "/".join([self.url.rstrip("/"), *parts])


@pytest.fixture(params=["local", "s3"])
def storage_root(request: pytest.FixtureRequest, tmp_path: Path) -> StorageRoot:
    """The same test against local disk and against S3 (a fresh bucket on the session's moto server)."""
    if request.param == "local":
        return StorageRoot("local", str(tmp_path / "root"), None)
    server: MotoServer = request.getfixturevalue("s3_server")
    return StorageRoot("s3", server.new_bucket() + "/root", server.storage_options())


def _png16_rgb(rgb16) -> bytes:
    """A 48-bit RGB PNG (Pillow cannot write one): signature, IHDR, IDAT of big-endian rows, IEND."""
    import struct
    import zlib

    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def image_zoo() -> dict[str, bytes]:
    """Encoded images of every kind real datasets contain, good and bad, each 32×48 unless tiny."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)

    def save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    jpg = save(Image.fromarray(rgb), "JPEG", quality=90)
    gray16 = (np.arange(32 * 48).reshape(32, 48) * 40).astype(np.uint16)
    rgb16 = np.zeros((32, 48, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1] = 65535, 257 * 100
    return {
        "rgb_jpg": jpg,
        "rgb_png": save(Image.fromarray(rgb), "PNG"),
        "gray_png": save(Image.fromarray(rgb[..., 0]), "PNG"),
        "palette_png": save(Image.fromarray(rgb).convert("P"), "PNG"),
        "cmyk_jpg": save(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "rgba_png": save(Image.fromarray(np.dstack([rgb, np.full((32, 48), 128, np.uint8)])), "PNG"),
        "gray16_png": save(Image.fromarray(gray16), "PNG"),
        "rgb16_png": _png16_rgb(rgb16),
        "tiny_png": save(Image.fromarray(rgb[:4, :5]), "PNG"),
        "float_tiff": save(Image.fromarray(rgb[..., 0].astype(np.float32)), "TIFF"),
        "truncated_jpg": jpg[: len(jpg) // 2],
        "corrupt": b"this is not an image at all" * 10,
        "empty": b"",
    }


@pytest.fixture(scope="module")
def prefect_api():
    """A temporary Prefect API for this module's flow runs (a real server on SQLite); yields its URL."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def s3_secret(prefect_api, s3_server) -> str:
    """A Prefect Secret block holding the S3 server's fsspec options (how deployments receive credentials); its name."""
    import json

    from prefect.blocks.system import Secret

    Secret(value=json.dumps(s3_server.storage_options())).save("featup-test-s3", overwrite=True)
    return "featup-test-s3"


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): their
    tensors are tiny, and a second thread costs more in synchronisation than it saves, badly so on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
