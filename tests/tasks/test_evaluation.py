"""The scoring task on a real Prefect API: the UI sees its progress as a progress artifact on the run."""

from __future__ import annotations


import pytest

pytestmark = pytest.mark.slow
SIZE = 64


def _run_artifacts(flow_run_id) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


def test_scoring_moves_a_progress_artifact_to_done(prefect_api):
    from prefect import flow

    from featup.data.offline import fashion_mosaics
    from featup_tasks.evaluation import score_upsamplers

    mosaic = {"size": SIZE, "item_size": (20, 36), "items_per_image": (2, 3)}

    @flow(name="score-only")
    def score():
        return score_upsamplers(
            "efficientnet_lite0", ["lowres", "bilinear"], seg_train=list(fashion_mosaics(2, split="train", **mosaic)),
            seg_test=list(fashion_mosaics(1, split="test", **mosaic)), num_classes=11, class_names=None,
            depth_train=None, depth_test=None, cam_images=None, checkpoints={}, implicit_options={},
            settings={"image_size": SIZE, "pixels_per_image": 64, "seg_steps": 5}, weights=None,
            random_weights=False)

    state = score(return_state=True)
    assert [r["upsampler"] for r in state.result().rows] == ["lowres", "bilinear"]
    progress = _run_artifacts(state.state_details.flow_run_id)["featup-evaluation-progress"]
    # created at 0 %, moved stage by stage (the UI shows the latest), ending at 100 % with the last label
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert progress.description == "scoring lowres, bilinear: done"
