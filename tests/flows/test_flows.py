"""Every flow on tiny data through a real Prefect API (the test harness), with shards and stores on S3."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _artifacts(flow_run_id) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


@pytest.fixture(scope="module")
def s3_data(s3_secret, s3_server) -> dict[str, str]:
    """A bucket holding 8 mosaics (3 shards) and the photos at 64 px, written by the library (not the ingest flow,
    so that a broken flow fails its own test only)."""
    from featup.data import ingest

    bucket = s3_server.new_bucket()
    storage = s3_server.storage_options()
    ingest("fashion_mosaics", "-", f"{bucket}/mosaics", n=8, size=64, max_count=3, storage_options=storage,
           progress=False)
    photos = ingest("photos", "-", f"{bucket}/photos", size=64, crops_per_photo=1, storage_options=storage,
                    progress=False)
    return {"bucket": bucket, "mosaics": f"{bucket}/mosaics", "photos": f"{bucket}/photos",
            "photo_count": str(photos.num_samples)}


@pytest.fixture(scope="module")
def bilinear_store(s3_data, s3_secret, tmp_path_factory) -> str:
    """A feature store of the mosaics' bilinear features, written by the precompute flow."""
    from featup_flows.precompute import precompute_features

    summary = precompute_features(shards=s3_data["mosaics"], store=f"{s3_data['bucket']}/features",
                                  upsampler="bilinear", output_size=64, num_workers=0, concurrency=2,
                                  lock_dir=str(tmp_path_factory.mktemp("locks")), storage_secret=s3_secret)
    return summary["store"]


def test_ingest_flow_writes_shards_on_s3(s3_secret, s3_server):
    from featup_flows.ingest import ingest

    bucket = s3_server.new_bucket()
    seg = ingest("-", f"{bucket}/shards/mosaics", layout="fashion_mosaics", options={"n": 8, "size": 64},
                 shard_samples=3, storage_secret=s3_secret)
    assert seg["samples"] == 8 and seg["shards"] == 3 and seg["bad"] == []


def test_precompute_flow_fills_a_store_on_s3_and_a_rerun_skips_it(s3_data, s3_secret, s3_server, tmp_path):
    from featup.store import open_feature_store
    from featup_flows.precompute import precompute_features

    options = dict(shards=s3_data["mosaics"], store=f"{s3_data['bucket']}/fresh", upsampler="bilinear",
                   output_size=64, num_workers=0, lock_dir=str(tmp_path / "locks"), storage_secret=s3_secret)
    summary = precompute_features(concurrency=2, **options)
    assert summary["processed"] == 3 and summary["written"] == 8 and summary["bad"] == 0
    ds = open_feature_store(summary["store"], storage_options=s3_server.storage_options()).to_xarray()
    assert ds.features.shape == (8, 112, 64, 64) and ds.lowres.shape == (8, 112, 4, 4)
    assert np.isfinite(ds.features.values).all() and ds.attrs["backbone"] == "efficientnet_lite0"
    # The low-res features are the backbone's, the high-res their bilinear upsampling.
    up = ds.features.values.astype(np.float32)
    assert abs(up.mean() - ds.lowres.values.astype(np.float32).mean()) < 0.05 * np.abs(up).mean() + 1e-3
    again = precompute_features(**options)
    assert again["processed"] == 0 and again["skipped"] == 3


def test_evaluate_flow_publishes_a_report_readable_from_any_machine(s3_data, bilinear_store, s3_secret, s3_server):
    import httpx

    from featup_flows.evaluate import evaluate

    title = "flow test evaluation"
    state = evaluate(report=f"{s3_data['bucket']}/report", upsamplers=["lowres", "bilinear"],
                     seg_shards=s3_data["mosaics"], cam_shards=s3_data["photos"],
                     stores={"stored bilinear": bilinear_store}, image_size=64, cam_output_size=32,
                     max_images=int(s3_data["photo_count"]), probe_steps=20, title=title,
                     storage_secret=s3_secret, return_state=True)
    result = state.result()
    rows = {r["upsampler"]: r for r in result["rows"]}
    assert set(rows) == {"lowres", "bilinear", "stored bilinear"}
    assert 0 <= rows["bilinear"]["seg_miou"] <= 1 and 0 <= rows["lowres"]["cam_ad"] <= 100
    # The store's features are the bilinear ones (float16): the probe scores them alike; the CAM head is
    # not in the store, so that row has no CAM cells.
    assert abs(rows["stored bilinear"]["seg_miou"] - rows["bilinear"]["seg_miou"]) < 0.02
    assert rows["stored bilinear"].get("cam_ad") is None
    assert result["report"] == f"{s3_data['bucket']}/report/index.html"

    artifacts = _artifacts(state.state_details.flow_run_id)
    report, table, link = (artifacts[f"featup-evaluation-{k}"] for k in ("report", "table", "html"))
    # the whole report, pictures inside: the UI shows them on any machine; no path on the worker's disk
    assert report.data.startswith(f"# {title} — efficientnet_lite0")
    for section in ("## Best per column", "## What the numbers mean", "## How much to trust them", "## Settings"):
        assert section in report.data, section
    # metrics, features, segmentation, CAMs (no depth task here)
    assert report.data.count("](data:image/png;base64,") == 4 and "file://" not in report.data
    # the table artifact is on the report's scale (percent), rounded as shown
    records = {r["upsampler"]: r for r in json.loads(table.data)}
    assert records["bilinear"]["mIoU % ↑"] == round(rows["bilinear"]["seg_miou"] * 100, 2)
    assert f"{records['bilinear']['mIoU % ↑']:.2f}" in report.data
    # the HTML page is on object storage, behind a presigned link that a browser (here httpx) opens as is
    url = re.search(r"\((http[^)]+)\)", link.data).group(1)
    assert url.startswith(s3_server.storage_options()["endpoint_url"]) and "Signature" in url
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and f"<h1>{title} — efficientnet_lite0</h1>" in page.text
    assert page.headers["content-type"].startswith("text/html")  # shown by the browser, not downloaded
    assert page.text.count("src='data:image/png;base64,") == 4  # the figures travel inside the page


def test_train_jbu_flow_on_s3_resumes_from_its_checkpoint(s3_data, s3_secret, s3_server):
    from featup.checkpoints import load_checkpoint
    from featup_flows.train_jbu import train_jbu

    checkpoint = f"{s3_data['bucket']}/ckpt/jbu.pt"  # reached with the Secret block's credentials, like the shards
    options = dict(shards=s3_data["photos"], checkpoint=checkpoint, checkpoint_every=1, image_size=32,
                   batch_size=2, num_jitters=1, max_images=4, storage_secret=s3_secret)
    trained = train_jbu(steps=2, **options)
    assert trained["steps"] == 2
    resumed = train_jbu(steps=3, **options)
    _, metadata = load_checkpoint(checkpoint, storage_options=s3_server.storage_options())
    assert metadata["step"] == 3 and resumed["final"]["step"] == 3


def test_demo_publishes_its_report_on_the_demo_run_itself(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from featup_flows.demo import demo

    state = demo(out=str(tmp_path / "demo"), mosaics=4, image_size=64, upsamplers=["lowres", "jbu"],
                 return_state=True)
    result = state.result()
    assert [r["upsampler"] for r in result["rows"]] == ["lowres", "jbu"]
    run_id = state.state_details.flow_run_id
    artifacts = _artifacts(run_id)  # on the run a user opens, not on a nested one
    assert {"featup-evaluation-report", "featup-evaluation-table"} <= set(artifacts)
    assert artifacts["featup-evaluation-report"].data.startswith("# featup demo: efficientnet_lite0 on offline data")
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
    # two ingests and a precompute run as subflows; the evaluation runs in the demo's own run
    assert len(children) == 3
    assert not any(key.startswith("featup-evaluation") for child in children for key in _artifacts(child.id))


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
