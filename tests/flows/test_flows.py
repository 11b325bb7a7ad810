"""Every flow on tiny data through a real Prefect API (the test harness), with shards and stores on S3."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prefect_api():
    """A temporary Prefect API for this module's flow runs (a real server on SQLite)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):
        yield


@pytest.fixture(scope="module")
def s3_secret(prefect_api, s3_server) -> str:
    """A Prefect Secret block holding the S3 server's fsspec options: how deployments receive credentials."""
    from prefect.blocks.system import Secret

    Secret(value=json.dumps(s3_server.storage_options())).save("featup-test-s3", overwrite=True)
    return "featup-test-s3"


def _artifacts(flow_run_id) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


def test_ingest_precompute_evaluate_train_on_s3(prefect_api, s3_secret, s3_server, tmp_path):
    from featup_flows.evaluate import evaluate
    from featup_flows.ingest import ingest
    from featup_flows.precompute import precompute_features
    from featup_flows.train_jbu import train_jbu
    from featup.store import open_feature_store

    bucket = s3_server.new_bucket()
    storage = s3_server.storage_options()
    seg = ingest("-", f"{bucket}/shards/mosaics", layout="fashion_mosaics", options={"n": 8, "size": 64},
                 shard_samples=3, storage_secret=s3_secret)
    assert seg["samples"] == 8 and seg["shards"] == 3 and seg["bad"] == []

    summary = precompute_features(shards=f"{bucket}/shards/mosaics", store=f"{bucket}/features",
                                  upsampler="bilinear", output_size=64, num_workers=0, concurrency=2,
                                  lock_dir=str(tmp_path / "locks"), storage_secret=s3_secret)
    assert summary["processed"] == 3 and summary["written"] == 8 and summary["bad"] == 0
    store = open_feature_store(summary["store"], storage_options=storage)
    ds = store.to_xarray()
    assert ds.features.shape == (8, 112, 64, 64) and ds.lowres.shape == (8, 112, 4, 4)
    assert np.isfinite(ds.features.values).all() and ds.attrs["backbone"] == "efficientnet_lite0"
    # The low-res features are the backbone's, the high-res their bilinear upsampling.
    up = ds.features.values.astype(np.float32)
    assert abs(up.mean() - ds.lowres.values.astype(np.float32).mean()) < 0.05 * np.abs(up).mean() + 1e-3

    again = precompute_features(shards=f"{bucket}/shards/mosaics", store=f"{bucket}/features",
                                upsampler="bilinear", output_size=64, num_workers=0,
                                lock_dir=str(tmp_path / "locks"), storage_secret=s3_secret)
    assert again["processed"] == 0 and again["skipped"] == 3

    photos = ingest("-", f"{bucket}/shards/photos", layout="photos", options={"size": 64, "crops_per_photo": 1},
                    storage_secret=s3_secret)
    from prefect import get_client  # noqa: F401  (the state below carries the flow run id)

    state = evaluate(report=f"{bucket}/report", upsamplers=["lowres", "bilinear"],
                     seg_shards=f"{bucket}/shards/mosaics", cam_shards=f"{bucket}/shards/photos",
                     stores={"stored bilinear": summary["store"]},
                     image_size=64, cam_output_size=32, max_images=photos["samples"], probe_steps=20,
                     storage_secret=s3_secret, return_state=True)
    result = state.result()
    rows = {r["upsampler"]: r for r in result["rows"]}
    assert set(rows) == {"low-res", "bilinear", "stored bilinear"}
    assert 0 <= rows["bilinear"]["seg_miou"] <= 1 and 0 <= rows["low-res"]["cam_ad"] <= 100
    # The store's features are the bilinear ones (float16): the probe scores them alike; the CAM head is
    # not in the store, so that row has no CAM cells.
    assert abs(rows["stored bilinear"]["seg_miou"] - rows["bilinear"]["seg_miou"]) < 0.02
    assert rows["stored bilinear"].get("cam_ad") is None
    import fsspec

    fs = fsspec.filesystem("s3", **storage)
    written = fs.ls(f"{bucket}/report".removeprefix("s3://"))
    assert any(p.endswith("index.html") for p in written) and any(p.endswith(".png") for p in written)
    artifacts = _artifacts(state.state_details.flow_run_id)
    assert {"featup-evaluation-report", "featup-evaluation-table", "featup-evaluation-html"} <= set(artifacts)
    assert "mIoU" in artifacts["featup-evaluation-report"].data

    checkpoint = f"{bucket}/ckpt/jbu.pt"  # reached with the Secret block's credentials, like the shards
    trained = train_jbu(shards=f"{bucket}/shards/photos", checkpoint=checkpoint, steps=2,
                        checkpoint_every=1, image_size=32, batch_size=2, num_jitters=1, max_images=4,
                        storage_secret=s3_secret)
    assert trained["steps"] == 2
    resumed = train_jbu(shards=f"{bucket}/shards/photos", checkpoint=checkpoint, steps=3,
                        checkpoint_every=1, image_size=32, batch_size=2, num_jitters=1, max_images=4,
                        storage_secret=s3_secret)
    from featup.checkpoints import load_checkpoint

    _, metadata = load_checkpoint(checkpoint, storage_options=storage)
    assert metadata["step"] == 3 and resumed["final"]["step"] == 3


def test_precompute_on_a_local_dask_cluster(prefect_api, tmp_path):
    from featup.data import ingest as ingest_layout
    from featup.store import open_feature_store
    from featup_flows.precompute import precompute_features

    ingest_layout("fashion_mosaics", "-", str(tmp_path / "shards"), n=6, size=32, max_count=2, progress=False)
    summary = precompute_features(shards=str(tmp_path / "shards"), store=str(tmp_path / "features"),
                                  upsampler="bilinear", output_size=32, num_workers=0, dask_workers=2,
                                  lock_dir=str(tmp_path / "locks"))
    assert summary["processed"] == 3 and summary["written"] == 6
    assert open_feature_store(summary["store"]).completed_shards() == [0, 1, 2]


def _run_precompute(shards: Path, store: Path, lock_dir: Path, home: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "featup_flows.cli", "precompute-features", "--shards", str(shards), "--store",
               str(store), "--upsampler", "bilinear", "--output-size", "224", "--batch-size", "1",
               "--num-workers", "0", "--lock-dir", str(lock_dir)]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)  # its own temporary API, like a user's `featup precompute-features`
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _temporary_api_of(pid: int) -> int | None:
    """The pid of the temporary Prefect API (uvicorn) a CLI process started, if it has one yet."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            try:
                if b"uvicorn" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
            except OSError:
                continue
    return None


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":  # exited, waiting to be reaped
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.1)
    return False


def test_killed_run_rerun_gives_the_same_store_as_an_uninterrupted_run(tmp_path):
    from featup.data import ingest as ingest_layout
    from featup.store import open_feature_store

    shards = tmp_path / "shards"
    ingest_layout("fashion_mosaics", "-", str(shards), n=12, size=224, max_count=3, progress=False)
    from featup.data.manifest import read_manifest

    group = f"{read_manifest(str(shards)).name}/efficientnet_lite0/bilinear"

    home = tmp_path / "prefect-home"  # one Prefect database for the three runs, as on a user's laptop
    clean = _run_precompute(shards, tmp_path / "clean", tmp_path / "locks-clean", home)
    assert clean.wait(timeout=600) == 0, clean.stdout.read().decode()[-3000:]

    killed = _run_precompute(shards, tmp_path / "killed", tmp_path / "locks", home)
    deadline = time.monotonic() + 600
    completed: list[int] = []
    server = None
    while time.monotonic() < deadline and killed.poll() is None:
        server = server or _temporary_api_of(killed.pid)
        try:
            completed = open_feature_store(str(tmp_path / "killed" / group)).completed_shards()
        except (FileNotFoundError, KeyError, ValueError):
            completed = []
        if completed:
            break
        time.sleep(0.05)
    assert server is not None, "the run started no temporary API"
    os.kill(killed.pid, signal.SIGKILL)  # the run's process only, as the OOM killer would
    killed.wait()
    interrupted = open_feature_store(str(tmp_path / "killed" / group))
    assert 1 <= len(interrupted.completed_shards()) < 4, "the kill must land while shards are still pending"
    try:
        assert _gone(server, 30), "the killed run's temporary Prefect API outlived it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(killed.pid, signal.SIGKILL)  # whatever else of its group is left

    # The same lock folder: a lock the killed run held must not stall the re-run; the killed run, left
    # RUNNING in the database, is marked crashed when the next one starts.
    rerun = _run_precompute(shards, tmp_path / "killed", tmp_path / "locks", home)
    assert rerun.wait(timeout=600) == 0, rerun.stdout.read().decode()[-3000:]
    output = rerun.stdout.read().decode()
    assert "crashed (its process is gone)" in output, output[-3000:]
    a = open_feature_store(str(tmp_path / "clean" / group)).to_xarray()
    b = open_feature_store(str(tmp_path / "killed" / group)).to_xarray()
    assert list(a.sample.values) == list(b.sample.values) and len(a.sample) == 12
    np.testing.assert_array_equal(a.features.values, b.features.values)
    np.testing.assert_array_equal(a.lowres.values, b.lowres.values)
