"""Storage credentials for tasks: from a Prefect Secret block or the environment, never from code or logs."""

from __future__ import annotations

import json
from typing import Any

from featup.io import is_transient


def storage_options(secret_block: str | None = None) -> dict[str, Any]:
    """fsspec storage options: the JSON held by Prefect Secret block ``secret_block``, or {} (environment).

    With no block, s3fs reads ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_ENDPOINT_URL``
    from the environment of the worker. The block holds e.g.
    ``{"key": "...", "secret": "...", "endpoint_url": "https://..."}``.
    """
    if not secret_block:
        return {}
    from prefect.blocks.system import Secret

    value = Secret.load(secret_block).get()
    options = json.loads(value) if isinstance(value, str) else dict(value)
    if not isinstance(options, dict):
        raise ValueError(f"Secret block {secret_block!r} must hold a JSON object of fsspec storage options")
    return options


def io_retry(task, old_state, new_state) -> bool:
    """Retry only faults that pass (network, throttling, 5xx): a missing file or a full disk fails at once."""
    try:
        new_state.result()
    except Exception as exc:
        return is_transient(exc)
    return False
