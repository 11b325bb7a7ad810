"""Flow: the main job on the embedded default — offline photos and a benchmark set, JBU features, a report."""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger

from featup_flows.evaluate import evaluate
from featup_flows.ingest import ingest
from featup_flows.precompute import precompute_features


@flow(name="demo", log_prints=True)
def demo(
    out: str = "featup-out/demo",
    backbone: str = "efficientnet_lite0",
    mosaics: int = 32,
    image_size: int = 224,
    upsamplers: list[str] = ["lowres", "bilinear", "jbu"],  # noqa: B006 (Prefect renders list defaults)
) -> dict[str, Any]:
    """Build shards from the offline sample photos and a Fashion-MNIST mosaic set, precompute the mosaics' JBU
    features with the shipped checkpoint into a zarr store, evaluate (a segmentation probe on the stored
    features, CAMs on the photos) and write a report.

    Args:
        out: Output folder (local path or fsspec URL) for shards, feature store and report.
        backbone: Backbone with a shipped JBU checkpoint.
        mosaics: Number of Fashion-MNIST mosaics (a quarter are test images).
        image_size: Image side in pixels.
        upsamplers: Upsamplers compared in the report.
    """
    logger = get_run_logger()
    out = out.rstrip("/")
    photos = ingest("-", f"{out}/shards/photos", layout="photos", options={"size": image_size}, overwrite=True)
    seg = ingest("-", f"{out}/shards/mosaics", layout="fashion_mosaics",
                 options={"n": mosaics, "size": image_size}, shard_samples=max(1, mosaics // 2), overwrite=True)
    store = precompute_features(shards=f"{out}/shards/mosaics", store=f"{out}/features", backbone=backbone,
                                upsampler="jbu", output_size=image_size, batch_size=4)
    # The JBU row scores the stored features (the CAM head, which the store does not hold, is upsampled live).
    stores = {"jbu": store["store"]} if "jbu" in upsamplers else None
    result = evaluate(report=f"{out}/report", backbone=backbone, upsamplers=upsamplers,
                      seg_shards=f"{out}/shards/mosaics", cam_shards=f"{out}/shards/photos", stores=stores,
                      image_size=image_size, title="featup demo: efficientnet_lite0 on offline data")
    page = result["report"]
    shown = page if "://" in page else os.path.abspath(page)
    print(f"\nfeatup demo done.\n  shards:   {photos['manifest']}, {seg['manifest']}\n"
          f"  features: {store['store']} ({store['written']} written, {store['skipped']} shards skipped)\n"
          f"  report:   {shown}\n")
    logger.info("report at %s", shown)
    return {"report": shown, "store": store["store"], "rows": result["rows"]}
