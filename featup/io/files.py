"""fsspec reads and atomic writes: the one way featup touches files, on local disk or object storage alike.

Every function takes ``storage_options`` (endpoint_url, key, secret, …) and passes it straight to fsspec; the
options never enter a log line, a repr or an exception message.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

StorageOptions = Mapping[str, Any] | None


def filesystem(url: str, storage_options: StorageOptions = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem serving ``url`` and the path inside it."""
    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


def is_local(url: str) -> bool:
    """True for a plain path or a ``file://`` URL."""
    return fsspec.utils.get_protocol(url) in ("file", "local")


def local_path(url: str) -> str:
    """The filesystem path of a local URL (``file:///x`` → ``/x``)."""
    return fsspec.core.url_to_fs(url)[1]


def join_url(base: str, *parts: str) -> str:
    """``base/part/…`` without doubled slashes; works for paths and URLs alike."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def exists(url: str, storage_options: StorageOptions = None) -> bool:
    """Whether an object or directory exists at ``url``."""
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def open_read(url: str, storage_options: StorageOptions = None) -> fsspec.core.OpenFile:
    """``url`` opened for streaming reads (a context manager): for files read piece by piece, like shards."""
    return fsspec.open(url, "rb", **dict(storage_options or {}))


def read_bytes(url: str, storage_options: StorageOptions = None) -> bytes:
    """The whole object at ``url``; FileNotFoundError names the URL."""
    fs, path = filesystem(url, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"nothing at {url}") from exc


@contextlib.contextmanager
def atomic_write(
    url: str, storage_options: StorageOptions = None, *, content_type: str | None = None
) -> Iterator[IO[bytes]]:
    """Open ``url`` for writing so that it appears complete or not at all (parent folders are made).

    Local files are written beside the target and renamed into place; object stores upload without
    committing (S3 multipart) and commit only when the block exits cleanly, discarding otherwise — so a
    crash or an unreachable server never leaves a truncated file under the final name.
    ``content_type`` (e.g. ``"text/html; charset=utf-8"``) is recorded where the store keeps one (S3), so a
    browser following a link shows the object instead of downloading it as binary/octet-stream.
    """
    fs, path = filesystem(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(fs._parent(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    media = {"ContentType": content_type} if content_type and "s3" in fs.protocol else {}
    f = fs.open(path, "wb", autocommit=False, **media)
    try:
        yield f
        f.close()
        f.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            f.discard()
        raise


def write_bytes(
    url: str, data: bytes, storage_options: StorageOptions = None, *, content_type: str | None = None
) -> None:
    """Store ``data`` at ``url`` atomically, with its media type where the store records one (see :func:`atomic_write`)."""
    with atomic_write(url, storage_options, content_type=content_type) as f:
        f.write(data)
