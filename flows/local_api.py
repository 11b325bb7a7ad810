"""The Prefect API of a `featup <flow>` run on a laptop: a temporary server that dies with the run, and the
clean-up of runs a killed process left behind.

With no server configured, Prefect starts a temporary API (uvicorn on SQLite) as a child process and stops
it at exit, but a run killed with SIGKILL never reaches its exit handlers: the server lives on as an orphan,
and the flow run stays RUNNING in the database for good. Here the same server is started by the CLI with
the kernel's parent-death signal set (Linux ``PR_SET_PDEATHSIG``), so it gets SIGTERM the moment the run's
process dies, however it dies; and each start marks as Crashed the runs of this host whose process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

CLI_TAG = "featup-cli"
_PID_TAG = "featup-pid:"
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """In the server's process, before it execs: ask the kernel for SIGTERM when ``parent`` dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class TiedServer(SubprocessASGIServer):
    """Prefect's temporary API server (the same uvicorn command), which the kernel stops when its starter dies.

    The parent-death signal follows the thread that started the child: start it from the main thread.
    """

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        return subprocess.Popen(
            args=[sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                  "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                  "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, **server_env, **get_current_settings().to_environment_variables(exclude_unset=True)},
            preexec_fn=functools.partial(_die_with, os.getpid()),
        )


@contextlib.contextmanager
def local_api() -> Iterator[str | None]:
    """A temporary API tied to this process while in the block, unless a server is configured (yields its URL,
    or None when the configured one is used). Child processes (Dask workers) reach the same API."""
    if PREFECT_API_URL.value() or not sys.platform.startswith("linux"):
        yield None
        return
    server = TiedServer()
    server.start()
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        # send what the run still has queued for the API (logs, events) before the API goes away
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for service in (APILogWorker, EventsWorker):
            with contextlib.suppress(Exception):
                service.drain_all(timeout=10)
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        server.stop()


def run_tags() -> tuple[str, str]:
    """Tags that mark a flow run as run by this CLI process on this host (how a later start finds it)."""
    return CLI_TAG, f"{_PID_TAG}{socket.gethostname()}:{os.getpid()}"


def crash_stale_runs() -> list[str]:
    """Mark Crashed the unfinished flow runs started by `featup` on this host whose process is gone; their ids.

    A run killed with SIGKILL cannot report its end, so it would show RUNNING forever; the process that
    started it is recorded in its tags (:func:`run_tags`).
    """
    from featup_tasks.locks import process_alive
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    host = socket.gethostname()
    crashed = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[CLI_TAG]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))))
        for run in runs:
            owner = next((t[len(_PID_TAG):] for t in run.tags if t.startswith(_PID_TAG)), None)
            if owner is None or owner.rpartition(":")[0] != host:
                continue
            pid = int(owner.rpartition(":")[2])
            if pid == os.getpid() or process_alive(pid):
                continue
            client.set_flow_run_state(run.id, Crashed(message=f"its process ({pid} on {host}) ended without "
                                                              "reporting: killed or lost"), force=True)
            crashed.append(str(run.id))
    return crashed
