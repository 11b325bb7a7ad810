"""Evaluation tasks: score upsamplers with probes and CAMs, render the report, publish it as artifacts."""

from __future__ import annotations

import base64
import os
import sys
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from featup.backbones import MissingWeightsError
from featup.eval import CompareSettings, StoredFeatures, compare_upsamplers, write_report
from featup.eval.compare import ProgressFn
from featup.eval.report import report_markdown, table_records
from featup.io import filesystem, read_bytes
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
        elif name == "lowres":
            specs["lowres"] = None
        elif name == "implicit":
            specs["implicit"] = lambda backbone: ImplicitPerImage(backbone, **implicit_options)
        else:
            specs[name] = trained(name)
    return specs


def scoring_progress(upsamplers: list[str]) -> ProgressFn:
    """A progress artifact on this run (key ``featup-evaluation-progress``) and the callback that moves it: the
    Prefect UI shows how far scoring is (minutes on a CPU) and which stage is running."""
    what = f"scoring {', '.join(upsamplers)}"
    artifact = create_progress_artifact(progress=0.0, key="featup-evaluation-progress", description=what)

    def update(fraction: float, label: str) -> None:
        update_progress_artifact(artifact, progress=100.0 * fraction, description=f"{what}: {label}")

    return update


@task(name="score-upsamplers", tags=["gpu"], persist_result=False)
def score_upsamplers(backbone: str, upsamplers: list[str], *, seg_train: list | None, seg_test: list | None,
                     num_classes: int | None, class_names: list[str] | None, depth_train: list | None,
                     depth_test: list | None, cam_images: list | None, checkpoints: dict[str, str],
                     implicit_options: dict[str, Any], settings: dict[str, Any], weights: str | None,
                     random_weights: bool, stores: dict[str, str] | None = None, storage_secret: str | None = None):
    """Train the probes and compute the CAM metrics for every upsampler on the same features and splits.

    ``stores`` maps upsampler names to feature stores whose features are scored instead of computed.
    """
    tasks = [f"{what} probes on {len(train)} + {len(test)} images" for what, train, test in
             (("segmentation", seg_train, seg_test), ("depth", depth_train, depth_test)) if train is not None]
    tasks += [f"CAMs on {len(cam_images)} images"] if cam_images else []
    get_run_logger().info("scoring %s: %s (minutes on a CPU)", ", ".join(upsamplers), "; ".join(tasks))
    bb = models.backbone(backbone, None, weights, random_weights=random_weights)
    cam_bb = models.backbone(backbone, "stride32", weights, random_weights=random_weights) if cam_images else None
    specs = upsampler_specs(upsamplers, checkpoints, implicit_options, stores, storage_options(storage_secret))
    return compare_upsamplers(bb, specs,
                              seg_train=seg_train, seg_test=seg_test, num_classes=num_classes,
                              class_names=class_names, depth_train=depth_train, depth_test=depth_test,
                              cam_images=cam_images, cam_backbone=cam_bb, settings=CompareSettings(**settings),
                              progress=sys.stderr.isatty(),  # bars in a terminal, not in a worker's log
                              on_progress=scoring_progress(upsamplers))


@task(name="render-report", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=io_retry,
      persist_result=False)
def render_report(comparison, url: str, *, title: str, notes: str, backbone: str,
                  storage_secret: str | None) -> list[str]:
    """Write the report (markdown, HTML, PNG figures) to ``url``; returns what was written, page first."""
    written = write_report(comparison, url, title=title, notes=notes, backbone=backbone,
                           storage_options=storage_options(storage_secret))
    get_run_logger().info("report written to %s", written[0])
    return written


# How long a presigned link to a report on object storage works (S3's longest for signature v4).
LINK_SECONDS = 7 * 24 * 3600


def browser_url(url: str, storage: dict[str, Any]) -> str | None:
    """Where any browser can open ``url``: itself for http(s), a presigned link on object storage, None on a
    local disk (a ``file://`` path names a file on the machine that ran the flow, nobody else's)."""
    if url.startswith(("http://", "https://")):
        return url
    if "://" not in url or url.startswith("file://"):
        return None
    fs, path = filesystem(url, storage)
    try:
        return fs.sign(path, expiration=LINK_SECONDS)
    except NotImplementedError:  # a filesystem without signed links (memory://, ...)
        return None


def _inline_png(url: str, storage: dict[str, Any]) -> str:
    """A figure as a data: URL, which the Prefect UI shows inside a markdown artifact wherever it is opened."""
    return "data:image/png;base64," + base64.b64encode(read_bytes(url, storage)).decode()


@task(name="publish-report", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=io_retry,
      persist_result=False)
def publish_report(comparison, written: list[str], *, key: str, title: str, notes: str, backbone: str,
                   storage_secret: str | None) -> dict[str, Any]:
    """Publish the report on this flow run as artifacts readable from the Prefect UI on any machine.

    ``{key}-report``: the whole report (table, winners, definitions, trust, settings) with its figures inline;
    ``{key}-table``: the table, on the report's scale; ``{key}-html``: a link to the HTML page where a browser
    can reach it (object storage: a presigned link), else a note saying where the folder is.
    """
    storage = storage_options(storage_secret)
    page = written[0]
    figures = {os.path.basename(u): _inline_png(u, storage) for u in written if u.endswith(".png")}
    link = browser_url(page, storage)
    folder = page.rsplit("/", 1)[0]
    if link:
        where = f"Full report (HTML, figures included; the link works for {LINK_SECONDS // 86400} days): [{page}]({link})"
    else:
        where = (f"Full report: `{page}` (with `report.md` and the PNG figures beside it) on the machine that ran "
                 f"this flow; write the report to object storage (an s3:// `report` folder) for a link that "
                 f"opens anywhere.")
    markdown = report_markdown(comparison, title=title, notes=notes, backbone=backbone, figure_urls=figures)
    markdown = markdown.replace("\n", f"\n\n{where}\n", 1)  # under the title
    create_markdown_artifact(key=f"{key}-report", markdown=markdown, description=f"{title}: the report")
    counts, protocol = comparison.counts, comparison.settings.probe_protocol
    create_table_artifact(key=f"{key}-table", table=table_records(comparison.rows, counts, protocol),
                          description=f"{title}: metrics (percent except RMSE and seconds)")
    if link:
        create_link_artifact(key=f"{key}-html", link=link, link_text=f"{title} (HTML report)",
                             description=f"the report's page in {folder}")
    get_run_logger().info("report published as artifacts %s-report, %s-table%s", key, key,
                          f", {key}-html" if link else "")
    return {"page": page, "link": link}
