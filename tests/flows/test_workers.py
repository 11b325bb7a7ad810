"""Several workers on one pool share a dataset: two precompute runs, two workers, every shard done once.

This is how a team scales out (docs/deploy.md): more workers on the `gpu` pool, each taking flow runs of
`precompute-features/features-gpu` for the same dataset. The shard locks of flows/precompute.py make runs that
meet on a shard wait for each other, so no shard is computed twice, and the store they write together
is the one a single run writes.

Whether two runs share the work depends on when each starts its shards: on a loaded machine one run can
start seconds after the other has done everything. So the test makes them meet: it creates the store as the
runs will, holds every shard's lock until both runs wait on one, and then lets them go together.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARDS, PER_SHARD = 6, 12  # shards long enough (seconds each) that two runs let go together each get some
START_AHEAD_S = 45  # time for both workers to start their flow-run processes (imports take 20 s on a busy machine)


def _dataset(root: Path) -> str:
    """SHARDS webdataset shards of PER_SHARD small random JPEGs (plus manifest.json) under ``root``."""
    from PIL import Image

    from featup.data import ingest

    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(SHARDS * PER_SHARD):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(images / f"img{i:03d}.jpg")
    url = str(root / "shards")
    manifest = ingest("folder", str(images), url, max_count=PER_SHARD, progress=False)
    assert len(manifest.shards) == SHARDS
    return url


def _summary(server, flow_run_id: str) -> dict:
    """The summary the flow logs when it is done ("done: {...}")."""
    return ast.literal_eval(server.wait_for_log(flow_run_id, r"done: (\{.*\})")[-1])


def _processed_shards(server, flow_run_id: str) -> set[int]:
    """Shards the run computed itself (its shard tasks log "shard N: K written"), from its sub-flow runs' logs."""
    with server.client() as api:
        children = api.post("/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
        ids = [flow_run_id, *(r["id"] for r in children.raise_for_status().json())]
    logs = "\n".join(server.logs_of(i) for i in ids)
    return {int(s) for s in re.findall(r"shard (\d+): \d+ written", logs)}


def _create_store_as_the_runs_will(shards: str, store: str, options: dict) -> tuple[str, str]:
    """The store the deployment's runs will reopen (same recipe, through the same helpers as their
    create-feature-store task), as (its URL, its version: what keys its shard locks)."""
    from featup_flows.precompute import precompute_features
    from featup_tasks import models

    from featup.data.manifest import read_manifest
    from featup.io import StorageRoot
    from featup.pipeline import feature_spec
    from featup.store import create_feature_store

    defaults = {k: p.default for k, p in inspect.signature(precompute_features.fn).parameters.items()}
    args = defaults | options
    manifest = read_manifest(shards)
    bb = models.backbone(args["backbone"], args["tap"])
    spec = feature_spec(manifest.name, bb, args["upsampler"], models.upsampler(args["upsampler"], bb),
                        size=(args["output_size"],) * 2, dtype=args["dtype"], keep_lowres=args["keep_lowres"])
    created = create_feature_store(StorageRoot(store), spec, manifest)
    return created.url, str(created.info.get("created"))


def _waiting_on_a_shard(server, flow_run_id: str) -> bool:
    """Whether the run has a precompute-shard task running (with the shard locks held by the test: waiting)."""
    with server.client() as api:
        children = api.post("/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
        ids = [r["id"] for r in children.raise_for_status().json()]
        if not ids:
            return False
        tasks = api.post("/task_runs/filter", json={"task_runs": {
            "flow_run_id": {"any_": ids}, "name": {"like_": "precompute-shard"}, "state": {"type": {"any_": ["RUNNING"]}}}})
        return bool(tasks.raise_for_status().json())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_workers_on_one_pool_process_every_shard_exactly_once(prefect_server, deployments, workers, tmp_path):
    server = workers
    shards = _dataset(tmp_path / "data")
    options = dict(upsampler="bilinear", output_size=224, batch_size=1, num_workers=0, device="cpu",
                   amp="float32", dtype="float32", concurrency=1)
    store, reference = str(tmp_path / "features"), str(tmp_path / "reference")
    for name in ("gpu-host-1", "gpu-host-2"):
        # one flow run at a time per worker, as on a GPU host; runs due within 2 minutes are taken at once
        server.start_worker("gpu", name, limit=1, env={"PREFECT_WORKER_PREFETCH_SECONDS": "120"})
    server.wait_for_workers("gpu", ["gpu-host-1", "gpu-host-2"])

    # The store exists before the runs, and the test holds every shard's lock: each run reopens the store and
    # waits on its first shard until the test lets both go at once.
    from featup_tasks.features import shard_lock_key
    from featup_tasks.locks import held, lock_manager

    lock_dir = str(tmp_path / "locks")
    url, version = _create_store_as_the_runs_will(shards, store, options)
    gate = ExitStack()
    for shard in range(SHARDS):
        gate.enter_context(held(lock_manager(lock_dir), shard_lock_key(url, version, shard)))

    # Both runs are scheduled for the same moment a little ahead: each worker starts its run's process and
    # imports the flow now, and the server holds both in Pending until then.
    started = time.monotonic()
    deployment = deployments["precompute-features/features-gpu"]["id"]
    parameters = dict(shards=shards, store=store, lock_dir=lock_dir, **options)
    at = (datetime.now(timezone.utc) + timedelta(seconds=START_AHEAD_S)).isoformat()
    with gate, server.client() as api:
        runs = [api.post(f"/deployments/{deployment}/create_flow_run",
                         json={"parameters": parameters,
                               "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": at}}})
                .raise_for_status().json() for _ in range(2)]
        deadline = time.monotonic() + 360
        while not all(_waiting_on_a_shard(server, r["id"]) for r in runs):
            assert time.monotonic() < deadline, "the two runs did not both reach a shard\n" + server.debug_output()
            time.sleep(1)
    # meanwhile, the same features by one run of the `featup` CLI into another store: what the two must add up to
    single = subprocess.Popen(
        [sys.executable, "-m", "featup_flows.cli", "precompute-features", "--shards", shards,
         "--store", reference, "--lock-dir", str(tmp_path / "locks-reference"),
         *[a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]],
        env=server.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        done = server.wait_for_flow_runs([r["id"] for r in runs], timeout=420)
        out, _ = single.communicate(timeout=300)
    finally:
        if single.poll() is None:
            single.kill()
            single.wait()
    print(f"two runs on two workers: {time.monotonic() - started:.0f} s")
    for run in done.values():
        assert run["state_type"] == "COMPLETED", f"{run['state_name']}\n{server.logs_of(run['id'])}\n" \
                                                 + server.debug_output()
    assert single.returncode == 0, out

    # each run was taken by its own worker and started while shards were still pending (on a loaded
    # machine the second may start a little later than the first: that is fine, what matters is below)
    hosts = sorted(run["labels"]["prefect.worker.name"] for run in done.values())
    assert hosts == ["gpu-host-1", "gpu-host-2"], server.debug_output()
    for run in runs:
        pending = re.findall(r"(\d+) of (\d+) shards pending", server.logs_of(run["id"]))
        assert len(pending) == 1 and int(pending[0][0]) > 0, f"a run found nothing to do: {pending}"

    # every shard computed by exactly one of the runs
    summaries = [_summary(server, r["id"]) for r in runs]  # first: the summary is a run's last line logged
    processed = [_processed_shards(server, r["id"]) for r in runs]
    print("shards computed per run:", [sorted(p) for p in processed], "summaries:", summaries)
    assert not processed[0] & processed[1], f"shards computed twice: {processed[0] & processed[1]}"
    assert processed[0] | processed[1] == set(range(SHARDS))

    # the store they wrote together is the one the test made (so the locks it held were theirs), complete,
    # and holds what a single run writes
    from featup.store import open_feature_store

    assert summaries[0]["store"] == url and str(open_feature_store(url).info.get("created")) == version
    together, alone = open_feature_store(summaries[0]["store"]), open_feature_store(_summary_url(out))
    assert together.pending_shards() == [] and together.completed_shards() == list(range(SHARDS))
    a, b = together.to_xarray(), alone.to_xarray()
    assert list(a["sample"].values) == list(b["sample"].values) and a.sizes["sample"] == SHARDS * PER_SHARD
    np.testing.assert_allclose(a["features"].values, b["features"].values, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["lowres"].values, b["lowres"].values, rtol=1e-4, atol=1e-5)

    # each run reports what it did itself: the shards the other run computed count as skipped
    for summary, mine in zip(summaries, processed):
        assert summary["shards"] == SHARDS
        assert (summary["processed"], summary["skipped"]) == (len(mine), SHARDS - len(mine)), (summary, mine)
    assert sum(s["written"] for s in summaries) == SHARDS * PER_SHARD
    # and the work was shared: two workers finish sooner than one
    assert processed[0] and processed[1], "one run computed every shard while the other waited on it"


def _summary_url(cli_output: str) -> str:
    """The store URL printed by `featup precompute-features` (its summary, as JSON)."""
    found = re.search(r'"store": "([^"]+)"', cli_output)
    assert found, cli_output
    return found.group(1)
