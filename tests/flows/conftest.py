"""A real Prefect server for the deployment tests: `prefect server start`, work pools, workers, the REST API.

One server per test session (starting it takes 20-60 s on a loaded 2-core machine), with its own
PREFECT_HOME and a free loopback port. Server and workers run as separate processes, each in its own
process group; a worker started in the background ignores the first SIGTERM, so a group gets SIGTERM
twice and then SIGKILL, and flow-run processes still running after their worker stopped (a worker starts
each in a session of its own) are killed by PID. The test process never changes its own Prefect
settings: it talks to the server over HTTP, as the UI does.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFECT = BIN / "prefect"
SERVER_START_TIMEOUT_S = 240
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class _RetryTransport(httpx.HTTPTransport):
    """Retry 429/502/503 with backoff, as Prefect's own client does (SQLite answers 503 when it is busy)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(8):
            response = super().handle_request(request)
            if response.status_code not in (429, 502, 503) or attempt == 7:
                return response
            response.close()
            time.sleep(min(0.5 * 2**attempt, 8))
        raise AssertionError("unreachable")


@dataclass
class Proc:
    """A child process in its own session (process group), with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the group twice (a worker ignores the first), then SIGKILL it; the group only."""
        pgid = self.popen.pid  # start_new_session=True: the group id is the child's pid
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; nothing else of its group may outlive it
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break

    def output(self) -> str:
        return _tail(self.log)


@dataclass
class PrefectServer:
    """A running `prefect server start` on a free loopback port, with its own PREFECT_HOME."""

    url: str  # the API URL, ".../api"
    home: Path
    logs: Path
    env: dict[str, str]  # environment for Prefect CLI / worker processes pointed at this server
    server: Proc | None = None
    workers: list[Proc] = field(default_factory=list)

    def client(self) -> httpx.Client:
        """An HTTP client on the REST API, as the UI uses it."""
        return httpx.Client(base_url=self.url, timeout=60, transport=_RetryTransport())

    def cli(self, *args: str, timeout: float = 240, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run `prefect ARGS` from the repository root against this server."""
        done = subprocess.run([str(PREFECT), *args], cwd=REPO, env={**self.env, **(env or {})}, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} exited {done.returncode}\n"
                                 f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-6000:]}")
        return done

    def start_worker(self, pool: str, name: str, *, limit: int | None = None,
                     env: dict[str, str] | None = None) -> Proc:
        """`prefect worker start --pool POOL` in its own process group, on the repository checkout.

        FEATUP_CHECKOUT is set only here, in the worker's environment: the pull steps of prefect.yaml
        resolve it on the worker host at run time, as on a real GPU host with its own checkout.
        """
        args = [str(PREFECT), "worker", "start", "--pool", pool, "--name", name]
        if limit is not None:
            args += ["--limit", str(limit)]
        log = self.logs / f"worker-{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(args, cwd=self.home, stdout=out, stderr=subprocess.STDOUT,
                                     env={**self.env, "FEATUP_CHECKOUT": str(REPO), **(env or {})},
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        worker = Proc(name, popen, log)
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, pool: str, names: Sequence[str], timeout: float = 120) -> None:
        """Until every named worker has sent a heartbeat for ``pool`` (it is then polling for runs)."""
        deadline = time.monotonic() + timeout
        with self.client() as api:
            while time.monotonic() < deadline:
                for w in self.workers:
                    if w.name in names and not w.alive():
                        raise AssertionError(f"worker {w.name} exited:\n{w.output()}")
                seen = {w["name"] for w in api.post(f"/work_pools/{pool}/workers/filter", json={}).json()}
                if set(names) <= seen:
                    return
                time.sleep(1)
        raise AssertionError(f"workers {names} did not report to pool {pool} within {timeout} s:\n"
                             + "\n".join(w.output() for w in self.workers if w.name in names))

    def stop_workers(self) -> None:
        """Stop the workers, then any flow-run process of this server still running (a worker starts each
        in its own session, so stopping the worker's group does not reach them)."""
        for worker in self.workers:
            worker.stop()
        self.workers.clear()
        try:
            with self.client() as api:
                runs = api.post("/flow_runs/filter", json={"flow_runs": {"state": {"type": {"not_any_": sorted(
                    TERMINAL_STATES)}}}}).json()
        except httpx.HTTPError:
            return
        ours = f"PREFECT_API_URL={self.url}".encode()
        for run in runs:
            pid = str(run.get("infrastructure_pid") or "").rsplit(":", 1)[-1]
            if not pid.isdigit():
                continue
            try:  # only a process started for this server: its environment names this API
                if ours not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    continue
                os.killpg(int(pid), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

    def wait_for_flow_runs(self, flow_run_ids: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Poll until every flow run is in a terminal state; returns the runs by id."""
        deadline = time.monotonic() + timeout
        runs: dict[str, dict[str, Any]] = {}
        with self.client() as api:
            while time.monotonic() < deadline:
                runs = {i: api.get(f"/flow_runs/{i}").raise_for_status().json() for i in flow_run_ids}
                if all(r["state_type"] in TERMINAL_STATES for r in runs.values()):
                    return runs
                time.sleep(2)
        states = {i: r.get("state_type") for i, r in runs.items()}
        raise AssertionError(f"flow runs not finished within {timeout} s: {states}\n" + self.debug_output())

    def logs_of(self, flow_run_id: str) -> str:
        """The flow run's log lines, as the UI shows them."""
        with self.client() as api:
            lines = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                                   "sort": "TIMESTAMP_ASC", "limit": 200}).json()
        return "\n".join(f"{line['level']:>2} {line['message']}" for line in lines)

    def wait_for_log(self, flow_run_id: str, pattern: str, timeout: float = 60) -> list[str]:
        """Poll the flow run's logs until ``pattern`` matches; returns its matches.

        A flow run's logs reach the API in batches, after its state: a run can read COMPLETED while its last
        lines are still on their way, so a test reading them straight after the state would race.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.logs_of(flow_run_id))
            if found or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert found, f"no {pattern!r} within {timeout} s in the logs of {flow_run_id}:\n{self.logs_of(flow_run_id)}"
        return found

    def debug_output(self) -> str:
        parts = [f"--- worker {w.name} ---\n{w.output()}" for w in self.workers]
        if self.server is not None:
            parts.append(f"--- server ---\n{self.server.output()[-2000:]}")
        return "\n".join(parts)


def _start_server(home: Path) -> PrefectServer:
    port = _free_port()
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        PREFECT_CLI_PROMPT="false",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    server_env = {**base, "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_SERVER_API_HOST": "127.0.0.1",
                  "PREFECT_SERVER_API_PORT": str(port)}
    log = logs / "server.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                 cwd=home, env=server_env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    server = Proc("server", popen, log)
    client_env = {
        **base,
        "PREFECT_API_URL": url,
        # workers poll every 2 s instead of 10 s, so runs start promptly
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
    }
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"prefect server exited with {popen.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return PrefectServer(url=url, home=home, logs=logs, env=client_env, server=server)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"prefect server did not answer on {url} within {SERVER_START_TIMEOUT_S} s:\n"
                       f"{server.output()}")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real `prefect server start` for the session (API only, SQLite in a temporary PREFECT_HOME)."""
    server = _start_server(tmp_path_factory.mktemp("prefect-home"))
    try:
        yield server
    finally:
        server.stop_workers()
        if server.server is not None:
            server.server.stop()


@pytest.fixture
def workers(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    """The session's server; every worker a test starts through it is stopped when the test ends."""
    yield prefect_server
    prefect_server.stop_workers()


@pytest.fixture(scope="session")
def work_pools(prefect_server: PrefectServer) -> dict[str, dict[str, Any]]:
    """The `gpu` and `cpu` pools of prefect.yaml, created as docs/deploy.md says, from deploy/process-pool.json."""
    template = str(REPO / "deploy" / "process-pool.json")
    creating = {pool: subprocess.Popen([str(PREFECT), "work-pool", "create", pool, "--type", "process",
                                        "--base-job-template", template], cwd=REPO, env=prefect_server.env,
                                       text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
                for pool in ("gpu", "cpu")}
    for pool, proc in creating.items():
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"prefect work-pool create {pool} exited {proc.returncode}:\n{out}"
    with prefect_server.client() as api:
        return {pool: api.get(f"/work_pools/{pool}").raise_for_status().json() for pool in creating}


@pytest.fixture(scope="session")
def deployments(prefect_server: PrefectServer, work_pools: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every deployment of prefect.yaml, deployed with `prefect --no-prompt deploy --all`, by "flow/deployment"."""
    prefect_server.cli("--no-prompt", "deploy", "--all", timeout=400)
    with prefect_server.client() as api:
        flows = {f["id"]: f["name"] for f in api.post("/flows/filter", json={}).raise_for_status().json()}
        found = api.post("/deployments/filter", json={}).raise_for_status().json()
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in found}
