"""Flow: the main job on the embedded default — offline photos and a benchmark set, JBU features, a report."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from featup_flows.evaluate import ImageSide, Upsampler, evaluate
from featup_flows.ingest import ingest
from featup_flows.params import ParameterError, check_backbone


def check_arguments(params: Mapping[str, Any]) -> None:
    """A known backbone; the upsamplers compared are not repeated."""
    check_backbone("backbone", params["backbone"])
    upsamplers = list(params.get("upsamplers") or [])
    if len(set(upsamplers)) != len(upsamplers):
        raise ParameterError("upsamplers", f"an upsampler is named twice: {' '.join(upsamplers)}")


@flow(name="demo", log_prints=True)
def demo(
    out: str = "featup-out/demo",
    backbone: str = "efficientnet_lite0",
    mosaics: Annotated[int, Field(ge=4)] = 32,
    image_size: ImageSide = 224,
    upsamplers: Annotated[list[Upsampler], Field(min_length=1)] = ["lowres", "bilinear", "jbu"],  # noqa: B006
) -> dict[str, Any]:
    """Build shards from the offline sample photos and a Fashion-MNIST mosaic set, precompute the mosaics' JBU
    features with the shipped checkpoint into a zarr store, evaluate (a segmentation probe on the stored
    features, CAMs on the photos) and write a report, published as artifacts on this run.

    Args:
        out: Output folder (local path or fsspec URL) for shards, feature store and report.
        backbone: Backbone with a shipped JBU checkpoint.
        mosaics: Number of Fashion-MNIST mosaics, at least 4 (a quarter are test images).
        image_size: Image side in pixels, a multiple of 32 (the CAM head's stride).
        upsamplers: What the report compares: lowres (the backbone's own features) and upsamplers.
    """
    check_arguments(locals())
    # Imported here so that `featup demo --help` and its argument checks skip torch (seconds).
    from featup_flows.precompute import precompute_features

    out = out.rstrip("/")
    photos = ingest("-", f"{out}/shards/photos", layout="photos", options={"size": image_size}, overwrite=True)
    seg = ingest("-", f"{out}/shards/mosaics", layout="fashion_mosaics",
                 options={"n": mosaics, "size": image_size}, shard_samples=max(1, mosaics // 2), overwrite=True)
    store = precompute_features(shards=f"{out}/shards/mosaics", store=f"{out}/features", backbone=backbone,
                                upsampler="jbu", output_size=image_size, batch_size=4)
    # The JBU row scores the stored features (the CAM head, which the store does not hold, is upsampled live).
    stores = {"jbu": store["store"]} if "jbu" in upsamplers else None
    # evaluate's body runs in this flow run (not as a subflow), so the report's artifacts are on the demo run.
    result = evaluate.fn(report=f"{out}/report", backbone=backbone, upsamplers=upsamplers,
                         seg_shards=f"{out}/shards/mosaics", cam_shards=f"{out}/shards/photos", stores=stores,
                         image_size=image_size, title=f"featup demo: {backbone} on offline data")
    page = result["report"]
    shown = page if "://" in page else os.path.abspath(page)
    print(f"\nfeatup demo done.\n  shards:   {photos['manifest']}, {seg['manifest']}\n"
          f"  features: {store['store']} ({store['written']} written, {store['skipped']} shards skipped)\n"
          f"  report:   {shown}\n")
    return {"report": shown, "store": store["store"], "rows": result["rows"]}
