"""Evaluation tasks: score upsamplers with probes and CAMs, render the report, publish it as artifacts."""

from __future__ import annotations

import os
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from featup.backbones import MissingWeightsError
from featup.eval import CompareSettings, StoredFeatures, compare_upsamplers, markdown_table, write_report
from featup.pipeline import ImplicitPerImage
from featup.store import open_feature_store
from featup.upsamplers import list_upsamplers, load_upsampler
from featup_tasks import models
from featup_tasks.storage import io_retry, storage_options


def upsampler_specs(names: list[str], checkpoints: dict[str, str], implicit_options: dict[str, Any],
                    stores: dict[str, str] | None = None, storage: dict[str, Any] | None = None) -> dict:
    """Upsampler specs for `compare_upsamplers`: None for low-res, factories for the rest.

    A factory returns None where no trained weights exist for a backbone, which leaves that
    upsampler's cells empty rather than scoring an untrained model. A name in ``stores`` reads its
    features from that feature store (written by precompute-features) instead of upsampling.
    """
    def trained(name: str):
        def make(backbone):
            try:
                return load_upsampler(name, backbone=backbone.id, checkpoint=checkpoints.get(name), dim=backbone.dim)
            except (MissingWeightsError, ValueError):
                return None
        return make

    specs: dict[str, Any] = {}
    stores = dict(stores or {})
    for name in [*names, *(n for n in stores if n not in names)]:
        if name in stores:
            # Backbones the store was not made for (e.g. the CAM head) are upsampled on the fly.
            fallback = trained(name) if name in list_upsamplers() else None
            specs[name] = StoredFeatures(open_feature_store(stores[name], storage_options=storage), otherwise=fallback)
        elif name in ("lowres", "low-res"):
            specs["low-res"] = None
        elif name == "implicit":
            specs["implicit"] = lambda backbone: ImplicitPerImage(backbone, **implicit_options)
        else:
            specs[name] = trained(name)
    return specs


@task(name="score-upsamplers", tags=["gpu"], persist_result=False)
def score_upsamplers(backbone: str, upsamplers: list[str], *, seg_train: list | None, seg_test: list | None,
                     num_classes: int | None, class_names: list[str] | None, depth_train: list | None,
                     depth_test: list | None, cam_images: list | None, checkpoints: dict[str, str],
                     implicit_options: dict[str, Any], settings: dict[str, Any], weights: str | None,
                     random_weights: bool, stores: dict[str, str] | None = None, storage_secret: str | None = None):
    """Train the probes and compute the CAM metrics for every upsampler on the same features and splits.

    ``stores`` maps upsampler names to feature stores whose features are scored instead of computed.
    """
    bb = models.backbone(backbone, None, weights, random_weights=random_weights)
    cam_bb = models.backbone(backbone, "stride32", weights, random_weights=random_weights) if cam_images else None
    specs = upsampler_specs(upsamplers, checkpoints, implicit_options, stores, storage_options(storage_secret))
    return compare_upsamplers(bb, specs,
                              seg_train=seg_train, seg_test=seg_test, num_classes=num_classes,
                              class_names=class_names, depth_train=depth_train, depth_test=depth_test,
                              cam_images=cam_images, cam_backbone=cam_bb, settings=CompareSettings(**settings),
                              progress=False)


@task(name="render-report", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=io_retry,
      persist_result=False)
def render_report(comparison, url: str, *, title: str, notes: str, storage_secret: str | None) -> list[str]:
    """Write the report (markdown, HTML, PNG figures) to ``url``; returns what was written, page first."""
    written = write_report(comparison, url, title=title, notes=notes, storage_options=storage_options(storage_secret))
    get_run_logger().info("report written to %s", written[0])
    return written


def _link(url: str) -> str:
    return url if "://" in url else "file://" + os.path.abspath(url)


@task(name="publish-report", persist_result=False)
def publish_report(comparison, written: list[str], *, key: str, title: str) -> None:
    """Publish the report as Prefect artifacts: markdown (table + figures), a table, and links."""
    pictures = [u for u in written if u.endswith(".png")]
    page = next((u for u in written if u.endswith(".html")), written[0])
    markdown = "\n".join(
        [f"# {title}", "", markdown_table(comparison.rows), "", f"Full report: [{page}]({_link(page)})", ""]
        + [f"- [{os.path.basename(u)}]({_link(u)})" for u in pictures]
    )
    create_markdown_artifact(key=f"{key}-report", markdown=markdown, description=title)
    create_table_artifact(key=f"{key}-table", table=[dict(r) for r in comparison.rows], description=title)
    create_link_artifact(key=f"{key}-html", link=_link(page), link_text="report (HTML)", description=title)
