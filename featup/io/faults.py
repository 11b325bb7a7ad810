"""Which I/O failures heal by themselves (retry them) and which do not (fail fast, saying how to fix them).

A precompute over object storage meets both kinds. Connection refusals, timeouts, throttling and 5xx
answers pass: retrying later succeeds. A missing file, a full disk, a denied permission or a corrupt file
stay as they are however often one retries, so waiting on them only delays the error the user must act
on. Readers use this to tell a damaged shard (recorded as bad samples) from an unreachable one (the shard
stays pending), and tasks use it to decide retries.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

# errno values of faults that pass: the network, a busy or throttling server, a remote 5xx (s3fs maps
# S3's InternalError to EREMOTEIO and SlowDown / ServiceUnavailable / 503 to EBUSY).
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
    errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EPIPE, errno.EAGAIN, errno.EBUSY,
    errno.EREMOTEIO,
}
# errno values that never heal by waiting (a full disk needs someone to free space).
_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                     errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL}
# botocore / aiohttp / urllib3 exception class names of faults that pass (matched by name, so that this
# module needs none of those packages).
_TRANSIENT_NAMES = {
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
    "ProxyConnectionError", "HTTPClientError", "IncompleteRead", "ResponseStreamingError",
    "ClientConnectionError", "ClientConnectorError", "ClientOSError", "ServerDisconnectedError",
    "ServerTimeoutError", "ClientPayloadError", "FSTimeoutError", "ProtocolError", "ResponseParserError",
    "ConnectionError", "TimeoutError", "BusyLoadingError",  # redis' own (not the builtins)
}
_TRANSIENT_CODES = {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "TooManyRequestsException", "RequestLimitExceeded"}


class TransientError(OSError):
    """A fault that passes (network, throttling, 5xx): the operation can be retried as is."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _transient_one(exc: BaseException) -> bool | None:
    """True / False when ``exc`` itself says whether it passes; None when it does not tell."""
    if isinstance(exc, TransientError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _TRANSIENT_NAMES:
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore.exceptions.ClientError
        error = response.get("Error", {}) or {}
        status = (response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode") or 0
        return error.get("Code") in _TRANSIENT_CODES or int(status) >= 500 or int(status) == 429
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in _TRANSIENT_ERRNOS:
            return True
        if exc.errno in _PERMANENT_ERRNOS:
            return False
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying what raised ``exc`` can succeed: network, throttling and 5xx faults, anywhere in its chain.

    The chain (``raise ... from``) is searched from the outside in, so a wrapper such as the store's
    ShardWriteError is judged by the fault it wraps; the first link that tells decides.
    """
    for link in _chain(exc):
        verdict = _transient_one(link)
        if verdict is not None:
            return verdict
    return False


def _hint(exc: BaseException) -> str:
    for link in _chain(exc):
        code = getattr(link, "errno", None)
        if code in (errno.ENOSPC, errno.EDQUOT):
            return "free space there (or write elsewhere) and re-run: completed shards are kept"
        if code in (errno.EACCES, errno.EPERM, errno.EROFS) or isinstance(link, PermissionError):
            return "check the permissions or credentials for that location"
        if isinstance(link, FileNotFoundError):
            return "check the path or URL"
        if _transient_one(link):
            return "check that the storage endpoint is up and reachable, then re-run: completed shards are kept"
    return ""


def describe(exc: BaseException) -> str:
    """One line naming what went wrong (the innermost cause's message too, when it adds to it) and what to do."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, (ValueError, OSError, KeyError, LookupError)) or not str(exc).strip():
        message = f"{type(exc).__name__}: {message}"
    root = list(_chain(exc))[-1]
    if root is not exc and str(root).strip() and str(root).strip() not in message:
        message += f" ({type(root).__name__}: {str(root).strip().splitlines()[0]})"
    hint = _hint(exc)
    if hint and hint not in message:
        message += f"; {hint}"
    return message
