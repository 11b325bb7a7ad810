"""Flow: score upsamplers with linear probes and CAMs on shard sets, render the report, publish artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from pydantic import Field

from featup_flows.params import ParameterError, check_backbone, check_local_input

# What a report row can be: the backbone's own features, or a registered upsampler (a test keeps this in step
# with featup.upsamplers.list_upsamplers()). The form shows them as choices.
Upsampler = Literal["lowres", "bilinear", "bilateral", "resize_conv", "jbu", "implicit"]
# CAMs come from the stride-32 head, whose grid must be whole: the form says so before a run fails on it.
ImageSide = Annotated[int, Field(ge=32, multiple_of=32)]
Count = Annotated[int, Field(ge=1)]


def _split(samples: list[dict[str, Any]], test_every: int) -> tuple[list, list]:
    """Deterministic train/test split by position: every ``test_every``-th sample is a test sample."""
    return ([s for i, s in enumerate(samples) if i % test_every],
            [s for i, s in enumerate(samples) if i % test_every == 0])


def check_arguments(params: Mapping[str, Any]) -> None:
    """What the signature cannot say: a known backbone, something to evaluate, test shards with their train
    shards, local inputs that exist, no upsampler named twice."""
    if not (params.get("seg_shards") or params.get("depth_shards") or params.get("cam_shards")):
        raise ParameterError("cam_shards", "nothing to evaluate: give `seg_shards`, `depth_shards` and/or "
                                           "`cam_shards` (shard folders written by ingest)")
    for task in ("seg", "depth"):
        if params.get(f"{task}_test_shards") and not params.get(f"{task}_shards"):
            raise ParameterError(f"{task}_test_shards", f"test shards need training shards: give `{task}_shards` too")
    upsamplers = list(params.get("upsamplers") or [])
    if len(set(upsamplers)) != len(upsamplers):
        raise ParameterError("upsamplers", f"an upsampler is named twice: {' '.join(upsamplers)}")
    check_backbone("backbone", params["backbone"])
    for name in ("seg_shards", "seg_test_shards", "depth_shards", "depth_test_shards", "cam_shards", "weights"):
        check_local_input(name, params.get(name))


@flow(name="evaluate", log_prints=True)
def evaluate(
    report: str = "featup-out/report",
    backbone: str = "efficientnet_lite0",
    upsamplers: Annotated[list[Upsampler], Field(min_length=1)] = ["lowres", "bilinear", "jbu"],  # noqa: B006
    seg_shards: str | None = None,
    seg_test_shards: str | None = None,
    depth_shards: str | None = None,
    depth_test_shards: str | None = None,
    cam_shards: str | None = None,
    image_size: ImageSide = 224,
    output_size: Count | None = None,
    cam_output_size: Count | None = 112,
    max_images: Count | None = 64,
    test_every: Annotated[int, Field(ge=2)] = 4,
    probe_protocol: Literal["own", "lowres", "full"] = "own",
    probe_steps: Count = 300,
    checkpoints: dict[str, str] | None = None,
    stores: dict[str, str] | None = None,
    implicit_steps: Count | None = None,
    weights: str | None = None,
    random_weights: bool = False,
    seed: int = 0,
    title: str = "FeatUp evaluation",
    storage_secret: str | None = None,
) -> dict[str, Any]:
    """Compare upsamplers as drop-in features: segmentation and depth probes, CAM faithfulness.

    Each task runs where its shards are given. The report (markdown, HTML and PNG figures) is
    written to ``report`` and published on this run as artifacts: the whole report as markdown with its
    pictures inline, a table artifact on the report's scale, and links to the HTML page where a browser
    can reach it (object storage).

    Args:
        report: Folder (local path or fsspec URL) to write the report into.
        backbone: Backbone whose features are upsampled; CAMs use its stride32 tap and ImageNet head.
        upsamplers: What to compare: lowres (the backbone's own features), bilinear, bilateral, resize_conv,
            jbu, implicit.
        seg_shards: Segmentation shards (labels) for the linear probe; split by test_every unless seg_test_shards.
        seg_test_shards: Separate test shards for segmentation.
        depth_shards: Depth shards for the depth probe; split by test_every unless depth_test_shards.
        depth_test_shards: Separate test shards for depth.
        cam_shards: Photos for CAM faithfulness (Average Drop / Average Increase).
        image_size: Input image side in pixels, a multiple of 32 (the CAM head's stride).
        output_size: Side of the upsampled features (default: image_size).
        cam_output_size: Side of upsampled CAM features (the 1280-channel head is costly at full size).
        max_images: At most this many samples read per shard set.
        test_every: Every n-th sample of a shard set is a test sample when no test shards are given.
        probe_protocol: own (per-upsampler probe, labels at the feature grid), lowres (one probe trained on
            lowres features, applied to all), full (probe trained at full resolution).
        probe_steps: Optimisation steps of each linear probe.
        checkpoints: Upsampler name -> checkpoint path or URL (default: featup's shipped checkpoints).
        stores: Row name -> feature store URL written by precompute-features; that row scores the stored
            features of each sample (looked up by key) instead of upsampling on the fly.
        implicit_steps: Fitting steps per image for the implicit upsampler (default: the featup recipe's steps).
        weights: Backbone weights path or URL.
        random_weights: Use random backbone weights (smoke runs only).
        seed: Seed of every random draw.
        title: Report title.
        storage_secret: Name of a Prefect Secret block holding fsspec storage options as JSON.
    """
    check_arguments(locals())
    # Imported here, not at the top: `featup evaluate --help` and its argument checks then skip torch and the
    # report's plotting stack (seconds on a small machine).
    from featup_tasks.data import read_samples
    from featup_tasks.evaluation import publish_report, render_report, score_upsamplers

    logger = get_run_logger()
    read = dict(size=image_size, limit=max_images, storage_secret=storage_secret)
    seg_train = seg_test = depth_train = depth_test = cam = None
    num_classes = class_names = None
    if seg_shards:
        from featup.data.manifest import read_manifest
        from featup_tasks.storage import storage_options

        class_names = read_manifest(seg_shards, storage_options=storage_options(storage_secret)).classes
        seg_train = read_samples(seg_shards, **read)
        if seg_test_shards:
            seg_test = read_samples(seg_test_shards, **read)
        else:
            seg_train, seg_test = _split(seg_train, test_every)
        num_classes = len(class_names) if class_names else 1 + max(int(s["label"].max()) for s in seg_train
                                                                   if s["label"] is not None)
    if depth_shards:
        depth_train = read_samples(depth_shards, **read)
        if depth_test_shards:
            depth_test = read_samples(depth_test_shards, **read)
        else:
            depth_train, depth_test = _split(depth_train, test_every)
    if cam_shards:
        cam = read_samples(cam_shards, **read)
    implicit_options = {"seed": seed} | ({} if implicit_steps is None else {"steps": implicit_steps})
    settings = dict(image_size=image_size, output_size=output_size, cam_output_size=cam_output_size,
                    probe_protocol=probe_protocol, seg_steps=probe_steps, depth_steps=probe_steps, seed=seed)
    comparison = score_upsamplers(backbone, list(upsamplers), seg_train=seg_train, seg_test=seg_test,
                                  num_classes=num_classes, class_names=class_names, depth_train=depth_train,
                                  depth_test=depth_test, cam_images=cam, checkpoints=dict(checkpoints or {}),
                                  implicit_options=implicit_options, settings=settings,
                                  weights=weights, random_weights=random_weights, stores=dict(stores or {}),
                                  storage_secret=storage_secret)
    notes = "Random backbone weights: a smoke run, the numbers mean nothing." if random_weights else ""
    written = render_report(comparison, report, title=title, notes=notes, backbone=backbone,
                            storage_secret=storage_secret)
    publish_report(comparison, written, key="featup-evaluation", title=title, notes=notes, backbone=backbone,
                   storage_secret=storage_secret)
    logger.info("report: %s", written[0])
    return {"report": written[0], "files": written, "rows": comparison.rows}
