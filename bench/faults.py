"""Fault drills for precompute-features: attack a run as a bad day would, then check the store it ends with.

    python bench/faults.py [--work DIR] [--keep]

Every drill runs the real `featup precompute-features` command (one process per run, as a user or a worker
would) on loopback only: a temporary Prefect API shared by the runs, moto S3, redis-server, a small tmpfs.
Each drill ends by comparing its store with the store of a clean run: keys, status, bad-sample reasons and
every feature value must be identical. Prints a markdown table (docs/reliability.md holds one).

Drills: kill the run (SIGKILL) and re-run; kill the storage (moto S3) mid-run, bring it back and re-run;
fill the disk (a tmpfs too small, or, where no tmpfs can be mounted, a disk quota is not tried: the drill
is skipped) then free space and re-run; cut a shard in half (recorded as bad samples, the rest identical);
two runs at once on one host (file locks); two "hosts" (separate lock folders) sharing Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SHARDS, PER_SHARD, SIZE = 16, 2, 64
# Runs that meet: many one-image shards, so that the second run finds plenty left even when its start
# stalls for seconds (a shared SQLite API under load does that).
MEET_SHARDS = 48
RUN = ["--upsampler", "bilinear", "--output-size", str(SIZE), "--num-workers", "0", "--batch-size", "1",
       "--dtype", "float32"]


@dataclass
class Drill:
    fault: str
    happened: str
    exits: str
    identical: str
    seconds: float


def _env(api: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _start(api: str, shards: str, store: str, locks: Path, log: Path, *extra: str, env: dict | None = None):
    out = open(log, "a")
    return subprocess.Popen([sys.executable, "-m", "featup_flows.cli", "precompute-features", "--shards", shards,
                             "--store", store, "--lock-dir", str(locks), *RUN, *extra],
                            cwd=REPO, env=env or _env(api), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _run(api: str, shards: str, store: str, locks: Path, log: Path, *extra: str, env: dict | None = None) -> int:
    proc = _start(api, shards, store, locks, log, *extra, env=env)
    try:
        return proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _summary(log: Path) -> dict:
    text = log.read_text()
    return json.loads(text[text.rindex('{\n  "store"'):text.rindex("}") + 1])


def _error_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("featup precompute-features: error")]


def _group(store: str, name: str) -> str:
    return f"{store.rstrip('/')}/{name}/efficientnet_lite0/bilinear"


def _completed(url: str, storage=None) -> list[int]:
    from featup.store import open_feature_store

    try:
        return open_feature_store(url, storage_options=storage).completed_shards()
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return []


def _compare(reference: str, url: str, storage=None, *, written_only: bool = False) -> str:
    """'yes' when the store at ``url`` equals the reference store in keys, status, reasons and every value."""
    from featup.store import open_feature_store

    a, b = open_feature_store(reference), open_feature_store(url, storage_options=storage)
    if b.pending_shards():
        return f"no: shards {b.pending_shards()} pending"
    keys_a, keys_b = a._array("keys")[:], b._array("keys")[:]
    status_a, status_b = a.status(), b.status()
    if list(keys_a) != list(keys_b):
        return "no: keys differ"
    rows = np.flatnonzero(status_b == 1)
    if not written_only and (not np.array_equal(status_a, status_b)
                             or list(a._array("bad_reason")[:]) != list(b._array("bad_reason")[:])):
        return "no: status or bad-sample reasons differ"
    for name in ("features", "lowres"):
        if not np.array_equal(a._array(name).oindex[rows], b._array(name).oindex[rows]):
            return f"no: {name} differ"
    return "yes" if not written_only else f"yes, its {len(rows)} written samples"


def _running(api: str, task: str) -> int:
    """Runs of the task ``task`` running now, as the API sees them."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return len(client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_=task),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING])))))


def _together(api: str, start_both, store: str, dataset: str, lock_dir: Path, redis_url: str | None = None):
    """Start two runs so that they really meet: both queue on the store-creation lock, held here until both wait."""
    from featup_tasks.locks import host_lock

    with host_lock(lock_dir, "store", store, dataset, "efficientnet_lite0", "bilinear", redis_url=redis_url):
        procs = start_both()
        _wait_for(lambda: _running(api, "create-feature-store") >= 2, 300)
        time.sleep(1)
    return procs


def _wait_for(predicate, timeout: float, proc=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="featup-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))

    from conftest import MotoServer, RedisServer

    from featup.data import ingest
    from featup_flows.local_api import TiedServer

    drills: list[Drill] = []
    api_server = TiedServer()
    api_server.start(timeout=240)
    api = api_server.api_url
    moto = None
    try:
        shards = str(work / "shards")
        manifest = ingest("fashion_mosaics", "-", shards, n=SHARDS * PER_SHARD, size=SIZE, max_count=PER_SHARD,
                          progress=False)
        name = manifest.name
        began = time.monotonic()
        assert _run(api, shards, str(work / "clean"), work / "locks-clean", work / "clean.log") == 0
        reference = _group(str(work / "clean"), name)
        drills.append(Drill("none (the reference run)", f"{SHARDS} shards computed", "0", "-",
                            time.monotonic() - began))

        # kill the run: SIGKILL the run's process once a shard is committed, then re-run
        began = time.monotonic()
        store = str(work / "killed")
        proc = _start(api, shards, store, work / "locks", work / "killed.log")
        _wait_for(lambda: _completed(_group(store, name)), 300, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done = len(_completed(_group(store, name)))
        rc = _run(api, shards, store, work / "locks", work / "killed.log")
        drills.append(Drill("kill the run (SIGKILL) after its first shard",
                            f"{done} of {SHARDS} shards were complete; the re-run computed "
                            f"{_summary(work / 'killed.log')['processed']}", f"killed, then {rc}",
                            _compare(reference, _group(store, name)), time.monotonic() - began))

        # kill the storage: moto S3 killed mid-run; the run fails in one line; storage back; re-run
        began = time.monotonic()
        moto = MotoServer(recording=work / "moto.jsonl").start()
        bucket = moto.new_bucket()
        from prefect.blocks.system import Secret
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            # one botocore attempt per call: the task's own retries (after 5 and 30 s) are the ones drilled
            Secret(value=json.dumps({**moto.storage_options(), "config_kwargs": {"retries": {"max_attempts": 1}}})
                   ).save("featup-faults-s3", overwrite=True)
        store = f"{bucket}/features"
        log = work / "s3.log"
        proc = _start(api, shards, store, work / "locks", log, "--storage-secret", "featup-faults-s3")
        _wait_for(lambda: _completed(_group(store, name), moto.storage_options()), 300, proc)
        moto.stop(signal.SIGKILL)
        first = proc.wait(timeout=600)
        errors = _error_lines(log)
        moto = MotoServer(port=moto.port, recording=work / "moto.jsonl").start()
        moto.replay()
        done = len(_completed(_group(store, name), moto.storage_options()))
        rc = _run(api, shards, store, work / "locks", log, "--storage-secret", "featup-faults-s3")
        drills.append(Drill("kill the storage (moto S3, SIGKILL) mid-run, restart it",
                            f"the run stopped with {done} shards committed: "
                            f"`{errors[0][len('featup precompute-features: '):][:110] if errors else '?'}…`; "
                            f"the re-run computed {_summary(log)['processed']}", f"{first}, then {rc}",
                            _compare(reference, _group(store, name), moto.storage_options()),
                            time.monotonic() - began))
        moto.stop()
        moto = None

        # fill the disk: a tmpfs that holds about half the store, then more space, then re-run
        began = time.monotonic()
        disk = work / "disk"
        disk.mkdir()
        clean_bytes = sum(f.stat().st_size for f in (work / "clean").rglob("*") if f.is_file())
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={clean_bytes // 2}", "tmpfs", str(disk)],
                                 capture_output=True, text=True)
        if mounted.returncode == 0:
            try:
                log = work / "disk.log"
                first = _run(api, shards, str(disk / "features"), work / "locks", log)
                errors = _error_lines(log)
                done = len(_completed(_group(str(disk / "features"), name)))
                subprocess.run(["mount", "-o", f"remount,size={clean_bytes * 2}", str(disk)], check=True)
                rc = _run(api, shards, str(disk / "features"), work / "locks", log)
                drills.append(Drill(f"fill the disk (tmpfs of {clean_bytes // 2 // 1024} KiB, half the store), "
                                    "then grow it", f"{done} shards committed before "
                                    f"`{errors[0][len('featup precompute-features: '):][:90] if errors else '?'}…`; "
                                    f"the re-run computed {_summary(log)['processed']}", f"{first}, then {rc}",
                                    _compare(reference, _group(str(disk / 'features'), name)),
                                    time.monotonic() - began))
            finally:
                subprocess.run(["umount", "-l", str(disk)], check=False)
        else:
            drills.append(Drill("fill the disk", f"skipped: no tmpfs could be mounted ({mounted.stderr.strip()})",
                                "-", "-", 0.0))

        # cut a shard: shard 3 cut in the middle of its second image
        began = time.monotonic()
        import tarfile

        cut_shards = work / "cut-shards"
        shutil.copytree(shards, cut_shards)
        victim = cut_shards / manifest.shards[3].name
        with tarfile.open(victim) as tar:
            member = next(m for m in tar.getmembers() if m.name == f"{manifest.shards[3].keys[1]}.jpg")
        victim.write_bytes(victim.read_bytes()[: member.offset_data + member.size // 2])
        log = work / "cut.log"
        rc = _run(api, str(cut_shards), str(work / "cut"), work / "locks", log)
        summary = _summary(log)
        drills.append(Drill("cut a shard in half (in its second image)",
                            f"the run went on: {summary['bad']} sample recorded bad with its reason, "
                            f"{summary['written']} written, damaged shards {summary['damaged_shards']}",
                            str(rc), _compare(reference, _group(str(work / "cut"), name), written_only=True),
                            time.monotonic() - began))

        # the drills where runs meet get their own dataset and reference: many one-image shards
        meet = str(work / "meet-shards")
        ingest("fashion_mosaics", "-", meet, n=MEET_SHARDS, size=SIZE, max_count=1, progress=False, name=name)
        assert _run(api, meet, str(work / "meet-clean"), work / "locks-meet-clean", work / "meet-clean.log") == 0
        reference = _group(str(work / "meet-clean"), name)
        shards = meet

        # two runs at once on one host: shared lock folder
        began = time.monotonic()
        store = str(work / "twice")
        logs = [work / "twice-a.log", work / "twice-b.log"]
        procs = _together(api, lambda: [_start(api, shards, store, work / "locks-twice", log) for log in logs],
                          store, name, work / "locks-twice")
        codes = [p.wait(timeout=600) for p in procs]
        processed = [_summary(log)["processed"] for log in logs]
        drills.append(Drill("two runs at once (one host, file locks)",
                            f"shards computed per run: {processed} (sum {sum(processed)} of {MEET_SHARDS})",
                            ", ".join(map(str, codes)), _compare(reference, _group(store, name)),
                            time.monotonic() - began))

        # two hosts sharing Redis: separate lock folders, one Redis
        began = time.monotonic()
        redis = RedisServer().start()
        try:
            store = str(work / "hosts")
            logs = [work / "host-a.log", work / "host-b.log"]
            procs = _together(api, lambda: [_start(api, shards, store, work / f"locks-host-{h}", log, "--redis-url",
                                                   redis.url) for h, log in zip("ab", logs)],
                              store, name, None, redis.url)
            codes = [p.wait(timeout=600) for p in procs]
            processed = [_summary(log)["processed"] for log in logs]
            drills.append(Drill("two \"hosts\" (own lock folders) sharing Redis",
                                f"shards computed per host: {processed} (sum {sum(processed)} of {MEET_SHARDS})",
                                ", ".join(map(str, codes)), _compare(reference, _group(store, name)),
                                time.monotonic() - began))

            # a host dies holding a shard: its Redis lease runs out and the other host takes the shard
            began = time.monotonic()
            store = str(work / "dead-host")
            lease = {"FEATUP_LOCK_LEASE_S": "3"}
            import redis as redis_client

            locks = redis_client.Redis.from_url(redis.url)
            dead = _start(api, shards, store, work / "locks-dead-a", work / "dead-a.log", "--redis-url", redis.url,
                          env=_env(api, **lease))
            # kill it while it holds a shard's lock (after a first shard, so that the store exists)
            _wait_for(lambda: _completed(_group(store, name)) and locks.keys("lock:*"), 300, dead)
            os.kill(dead.pid, signal.SIGKILL)
            dead.wait()
            held = len(locks.keys("lock:*"))
            rc = _run(api, shards, store, work / "locks-dead-b", work / "dead-b.log", "--redis-url", redis.url,
                      env=_env(api, **lease))
            drills.append(Drill("a host killed while holding a shard (Redis lease 3 s)",
                                f"killed holding {held} shard lock(s); the other host computed the "
                                f"{_summary(work / 'dead-b.log')['processed']} shards left", f"killed, then {rc}",
                                _compare(reference, _group(store, name)), time.monotonic() - began))
        finally:
            redis.stop()
    finally:
        if moto is not None:
            moto.stop()
        api_server.stop()
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{SHARDS} shards of {PER_SHARD} images ({MEET_SHARDS} shards of 1 where runs meet), {SIZE} px, "
          "efficientnet_lite0 + bilinear, float32 store; every run is `featup precompute-features` in its own "
          "process\n")
    print("| fault | what happened | exit status | store identical to a clean run | s |")
    print("|---|---|---|---|---|")
    for d in drills:
        print(f"| {d.fault} | {d.happened} | {d.exits} | {d.identical} | {d.seconds:.0f} |")
    return 0 if all(d.identical.startswith(("yes", "-")) for d in drills) else 1


if __name__ == "__main__":
    sys.exit(main())
