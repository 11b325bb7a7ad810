"""webdataset openers over fsspec; the fsspec helpers themselves (URL → filesystem, atomic writes) are in featup.io."""

from __future__ import annotations

from typing import IO, Any

import fsspec


def fsspec_gopen(url: str, mode: str = "rb", bufsize: int = 8192, **storage_options: Any) -> IO[bytes]:
    """A ``webdataset.gopen`` handler that opens any fsspec URL; keyword arguments are storage options."""
    del bufsize  # fsspec buffers by itself (block_size in storage_options)
    return fsspec.open(url, mode, **storage_options).open()


def register_gopen_schemes(protocols: tuple[str, ...] = ("s3", "s3a", "memory")) -> None:
    """Let plain ``webdataset.WebDataset("s3://…")`` open shards through fsspec (webdataset 1.0 has no S3).

    Credentials then come from the environment (AWS_* variables, ~/.aws); featup's own readers pass
    ``storage_options`` explicitly instead.
    """
    import webdataset

    for protocol in protocols:
        webdataset.gopen_schemes[protocol] = fsspec_gopen
