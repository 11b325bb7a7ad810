"""A user's bad day, on real parts: lost completion records, damaged shards, storage that will not heal or is
down, two hosts sharing Redis. Flows run against a real Prefect API (the test harness) and moto S3 on loopback.

Each test is one finding of the reliability issue: the store alone decides what is done, damage is recorded
and never stops a dataset, only faults that pass are retried, failures are one line with exit status 2.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
OPTIONS = ["--upsampler", "bilinear", "--output-size", "32", "--num-workers", "0", "--batch-size", "2"]


def _mosaics(url: str, storage_options=None, n: int = 6, size: int = 32, per_shard: int = 2):
    from featup.data import ingest

    return ingest("fashion_mosaics", "-", url, n=n, size=size, max_count=per_shard, progress=False,
                  storage_options=storage_options)


def _precompute(shards: str, store: str, lock_dir: Path, **kw):
    from featup_flows.precompute import precompute_features

    return precompute_features(shards=shards, store=store, upsampler="bilinear", num_workers=0,
                               lock_dir=str(lock_dir), **{"output_size": 32, **kw})


def _task_attempts(name: str) -> int:
    """How often the latest run of the task ``name`` ran (1 = not retried)."""
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)),
                                     sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=1)
    return runs[0].run_count


def _running(name: str) -> int:
    """How many runs of the task ``name`` are running now."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        return len(client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_=name),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING])))))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_rerun_recomputes_every_shard_the_store_does_not_record_complete(prefect_api, kind, tmp_path, request):
    """Finding 1: a lost completion record (S3 outage, a deleted object) is recomputed, whatever any cache says."""
    import fsspec

    from featup.store import open_feature_store

    if kind == "s3":
        server, secret = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_secret")
        root, storage = server.new_bucket(), server.storage_options()
    else:
        root, storage, secret = str(tmp_path), None, None
    _mosaics(f"{root}/shards", storage)
    first = _precompute(f"{root}/shards", f"{root}/features", tmp_path / "locks", storage_secret=secret)
    assert first["processed"] == 3
    store = open_feature_store(first["store"], storage_options=storage)
    before = store.to_xarray().features.values
    fs, group = fsspec.core.url_to_fs(first["store"], **(storage or {}))
    fs.rm(f"{group}/status/c/0")  # the completion record of shard 0, and its features, are gone
    fs.rm(f"{group}/features/c/0", recursive=True)
    assert open_feature_store(first["store"], storage_options=storage).pending_shards() == [0]

    again = _precompute(f"{root}/shards", f"{root}/features", tmp_path / "locks", storage_secret=secret)
    assert (again["processed"], again["skipped"]) == (1, 2)
    store = open_feature_store(first["store"], storage_options=storage)
    assert store.pending_shards() == []
    np.testing.assert_array_equal(store.to_xarray().features.values, before)


def _add_member(tar_path: Path, name: str) -> None:
    with tarfile.open(tar_path) as old:
        members = [(m, old.extractfile(m).read()) for m in old.getmembers()]
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, format="JPEG")
    with tarfile.open(tar_path, "w") as new:
        for member, data in [*members, (tarfile.TarInfo(name), buf.getvalue())]:
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))


def test_damaged_missing_and_extended_shards_are_recorded_and_the_run_goes_on(prefect_api, tmp_path, capfd):
    """Findings 2 and 5: a cut shard, a missing shard and an unlisted tar member do not stop the run; the summary
    and the exit status say that bad samples were recorded."""
    from featup.store import open_feature_store
    from featup_flows.cli import EXIT_BAD_SAMPLES, main

    manifest = _mosaics(str(tmp_path / "shards"), n=8)
    paths = [tmp_path / "shards" / s.name for s in manifest.shards]
    _add_member(paths[0], "../../evil.jpg")
    with tarfile.open(paths[1]) as tar:
        cut = next(m for m in tar.getmembers() if m.name == f"{manifest.shards[1].keys[1]}.jpg")
    paths[1].write_bytes(paths[1].read_bytes()[: cut.offset_data + cut.size // 2])
    paths[2].unlink()

    argv = ["precompute-features", "--shards", str(tmp_path / "shards"), "--store", str(tmp_path / "features"),
            "--lock-dir", str(tmp_path / "locks"), *OPTIONS]
    assert main(argv) == EXIT_BAD_SAMPLES
    out, err = capfd.readouterr()
    summary = json.loads(out[out.index("{"):])
    assert summary["processed"] == 4 and summary["written"] == 5  # shard 3, intact, came after the damage
    assert (summary["bad"], summary["unlisted"], summary["damaged_shards"]) == (3, 1, [1, 2])
    assert "3 bad samples recorded" in err and "Traceback" not in err + out
    store = open_feature_store(summary["store"])
    assert store.pending_shards() == []
    assert {b.key for b in store.bad_samples()} == {manifest.shards[1].keys[1], *manifest.shards[2].keys}

    assert main(argv) == 0, "a re-run has nothing left to do: the damaged shards are complete"
    out = capfd.readouterr()[0]
    rerun = json.loads(out[out.index("{"):])
    assert (rerun["processed"], rerun["skipped"], rerun["bad"]) == (0, 4, 0)


def test_faults_that_will_not_heal_fail_at_once_and_transient_ones_are_retried(prefect_api, tmp_path, moto_factory):
    """Finding 6: a missing folder is not retried; an S3 endpoint that is down (EndpointConnectionError) is."""
    from prefect import flow

    from featup_tasks.data import ingest_dataset

    quick = ingest_dataset.with_options(retry_delay_seconds=0)

    @flow(name="ingest-faults")
    def ingest_once(source: str, dest: str, storage_secret: str | None = None):
        return quick("folder", source, dest, name=None, max_count=10, max_mb=1, overwrite=False,
                     storage_secret=storage_secret, options={})

    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest_once(str(tmp_path / "no-such-folder"), str(tmp_path / "out"))
    assert _task_attempts("ingest-dataset") == 1

    from prefect.blocks.system import Secret

    server = moto_factory()
    bucket = server.new_bucket()
    Secret(value=json.dumps({**server.storage_options(), "config_kwargs": {"retries": {"max_attempts": 1}}})
           ).save("featup-down-s3", overwrite=True)
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    server.stop()
    with pytest.raises(Exception) as down:
        ingest_once(str(tmp_path / "photos"), f"{bucket}/out", storage_secret="featup-down-s3")
    from featup.io import is_transient

    assert is_transient(down.value), repr(down.value)
    assert _task_attempts("ingest-dataset") == 3


def test_failures_print_one_line_and_exit_2_a_full_disk_included(prefect_api, tmp_path, capfd):
    """Findings 6 and 7: a full disk (a 1 MiB tmpfs) fails at once, in one line naming the fix, exit status 2."""
    from featup_flows.cli import EXIT_FAILED, main

    assert main(["ingest", "--source", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == EXIT_FAILED
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("featup ingest: error:")]
    assert len(lines) == 1 and "does not exist" in lines[0], err
    assert "Traceback" not in out + err

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): the full-disk case needs one")
    try:
        _mosaics(str(tmp_path / "shards"), n=4, size=96)
        argv = ["precompute-features", "--shards", str(tmp_path / "shards"), "--store", str(disk / "features"),
                "--lock-dir", str(tmp_path / "locks"), "--dtype", "float32", "--output-size", "96",
                *OPTIONS[:2], *OPTIONS[4:]]
        started = time.monotonic()
        assert main(argv) == EXIT_FAILED
        out, err = capfd.readouterr()
        lines = [line for line in err.splitlines() if line.startswith("featup precompute-features: error:")]
        assert len(lines) == 1 and "No space left on device" in lines[0] and "free space" in lines[0], err
        assert "Traceback" not in out + err
        assert _task_attempts("precompute-shard") == 1, "a full disk is not retried"
        assert time.monotonic() - started < 120
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_two_hosts_sharing_redis_compute_every_shard_once(prefect_api, tmp_path, redis_url):
    """Finding 9: two runs with their own lock folders (two hosts) and one Redis split the shards."""
    from featup.store import open_feature_store
    from featup_tasks.locks import host_lock

    # many one-image shards: the run whose start lags (a busy API can stall it for seconds) still finds some left
    manifest = _mosaics(str(tmp_path / "shards"), n=32, size=64, per_shard=1)
    store_root = str(tmp_path / "features")
    import redis

    def lock_writes() -> int:  # redis-py takes a lock with SET NX
        return redis.Redis.from_url(redis_url).info("commandstats").get("cmdstat_set", {}).get("calls", 0)

    writes_before = lock_writes()
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    logs, runs = [], []
    # Both runs queue on the store's creation lock, held here until both wait on it, so that they really meet.
    with host_lock(None, "store", store_root, manifest.name, "efficientnet_lite0", "bilinear", redis_url=redis_url):
        for host in ("a", "b"):
            log = open(tmp_path / f"host-{host}.log", "w+")
            logs.append(log)
            runs.append(subprocess.Popen(
                [sys.executable, "-m", "featup_flows.cli", "precompute-features", "--shards", str(tmp_path / "shards"),
                 "--store", store_root, "--lock-dir", str(tmp_path / f"locks-{host}"), "--redis-url", redis_url,
                 "--upsampler", "bilinear", "--output-size", "64", "--num-workers", "0", "--batch-size", "1"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 300
        while _running("create-feature-store") < 2:
            assert time.monotonic() < deadline and all(r.poll() is None for r in runs), \
                "\n".join((tmp_path / f"host-{h}.log").read_text()[-3000:] for h in "ab")
            time.sleep(0.5)
        time.sleep(1)
    for run in runs:
        assert run.wait(timeout=600) == 0, "\n".join((tmp_path / f"host-{h}.log").read_text()[-3000:] for h in "ab")
    summaries = []
    for h in "ab":
        text = (tmp_path / f"host-{h}.log").read_text()
        summaries.append(json.loads(text[text.rindex('{\n  "store"'):text.rindex("}") + 1]))
    # Whether the runs overlap depends on timing (a busy SQLite API can hold one back for seconds); that
    # the shard locks went through Redis does not: one lock per shard at least.
    assert lock_writes() - writes_before >= len(manifest.shards)
    print("processed per host:", [s["processed"] for s in summaries])
    assert sum(s["processed"] for s in summaries) == len(manifest.shards), summaries
    assert sum(s["written"] for s in summaries) == 32
    assert open_feature_store(summaries[0]["store"]).pending_shards() == []


def test_a_tag_concurrency_limit_bounds_the_mapped_shard_tasks(prefect_api, tmp_path):
    """The shard tasks are mapped onto the task runner (3 threads here); Prefect's `gpu` tag concurrency limit
    still runs them one at a time, across every run that shares the API."""
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

    _mosaics(str(tmp_path / "shards"), n=6, size=64)
    began = datetime.now(timezone.utc)
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="gpu", concurrency_limit=1)
    try:
        summary = _precompute(str(tmp_path / "shards"), str(tmp_path / "features"), tmp_path / "locks",
                              output_size=224, concurrency=3)  # shards of seconds: overlap would show
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag("gpu")
    assert summary["processed"] == 3
    with get_client(sync_client=True) as client:
        shards = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_="precompute-shard"), start_time=TaskRunFilterStartTime(after_=began)))
    # (the sub-flow running them has a task run of its own, named precompute-shards-…)
    spans = sorted((r.start_time, r.end_time) for r in shards if r.name.startswith("precompute-shard-"))
    assert len(spans) == 3 and all(end for _, end in spans), spans
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - timedelta(seconds=0.2), f"two shard tasks ran at once: {spans}"
