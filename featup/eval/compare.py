"""Compare upsamplers on the same backbone features and splits: CAM faithfulness, segmentation and depth probes.

The rows mirror Table 1 of the FeatUp paper: A.D., A.I., mIoU, accuracy, RMSE and δ<1.25. Low-res
features are computed once per image and shared by every upsampler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from featup.eval.cam import explain
from featup.eval.depth_probe import evaluate_depth_probe, fit_depth_probe, predict_depth
from featup.eval.features import Upsample, backbone_features, image_tensor, upsampled
from featup.eval.metrics import align_scale_shift, average_drop, average_increase
from featup.eval.seg_probe import (
    evaluate_seg_probe,
    fit_seg_probe,
    predict_segmentation,
)
from featup.eval.stored import StoredFeatures

__all__ = ["METRICS", "CompareSettings", "Comparison", "Example", "ProgressFn", "UpsamplerSpec", "compare_upsamplers"]

# An upsampler to compare: None (the low-res features themselves), a module with
# ``forward(features, image01, output_size)``, or a factory called with each backbone that returns an
# `Upsample` (module or function) for it, or None where it cannot serve that backbone. A `StoredFeatures`
# is such a factory: it reads each sample's precomputed features from a feature store by key.
UpsamplerSpec = nn.Module | Callable[[nn.Module], Upsample | None] | None

# Told the fraction of a comparison's stages done (0..1) and a short label of the stage now starting.
ProgressFn = Callable[[float, str], None]

# Row keys of the metrics, in table order: (key, header, higher is better).
METRICS = (
    ("cam_ad", "A.D. ↓", False),
    ("cam_ai", "A.I. ↑", True),
    ("seg_miou", "mIoU ↑", True),
    ("seg_acc", "Acc. ↑", True),
    ("depth_rmse", "RMSE ↓", False),
    ("depth_delta1", "δ<1.25 ↑", True),
)
PROTOCOLS = ("own", "lowres", "full")


@dataclass(frozen=True)
class CompareSettings:
    """How the comparison runs; every random draw derives from ``seed``.

    ``probe_protocol``: "own" trains a probe per upsampler on its own features, labels reduced to the
    feature grid (the published protocol); "lowres" trains one probe on the low-res features and applies
    it to every upsampler's features (FeatUp's drop-in claim; implicit upsamplers then only fit test
    images); "full" trains per upsampler on features resized to the label's resolution.
    """

    image_size: int = 224
    output_size: int | None = None  # side of the upsampled features; None = image_size
    cam_output_size: int | None = None  # the same for CAMs (1280-channel maps are costly); None = output_size
    probe_protocol: str = "own"
    label_reduce: str = "majority"
    resize_mode: str = "nearest"  # low-res predictions and CAMs → label/image size
    pixels_per_image: int = 4096
    seg_steps: int = 300
    depth_steps: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if self.probe_protocol not in PROTOCOLS:
            raise ValueError(f"unknown probe_protocol {self.probe_protocol!r}; use one of {PROTOCOLS}")
        if self.resize_mode not in ("nearest", "bilinear"):
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}; use 'nearest' or 'bilinear'")


@dataclass
class Example:
    """One test image shown in a report: its target (label or depth, if any) and each upsampler's output."""

    image: np.ndarray  # H×W×3 uint8
    target: np.ndarray | None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    caption: str = ""


@dataclass
class Comparison:
    """Rows of metrics (one per upsampler), examples for the report, and what was run."""

    rows: list[dict[str, Any]]
    examples: dict[str, Example]  # "features", "seg", "depth", "cam" (where run)
    settings: CompareSettings
    counts: dict[str, int]
    class_names: list[str] | None = None


@dataclass
class _Prepared:
    """A sample's resized image, its low-res features and its target at full resolution."""

    key: str
    image: torch.Tensor  # 1×3×S×S in 0..1
    features: torch.Tensor  # 1×C×h×w
    target: torch.Tensor | None
    raw: np.ndarray  # the sample's image as H×W×3 uint8, for the report


class _Stages:
    """Counts a comparison's stages (a split's backbone pass, one upsampler's probe or CAMs) for ``on_progress``."""

    def __init__(self, total: int, on_progress: ProgressFn | None):
        self.total, self.done, self.on_progress = total, 0, on_progress

    def start(self, label: str) -> None:
        """Report the stage ``label`` as starting, then count it as done for the next report."""
        if self.on_progress is not None:
            self.on_progress(self.done / self.total, label)
        self.done += 1

    def finish(self) -> None:
        if self.on_progress is not None:
            self.on_progress(1.0, "done")


def _prepare(samples: Iterable[dict], backbone: nn.Module, size: int, field_name: str | None,
             what: str, progress: bool) -> list[_Prepared]:
    out = []
    for sample in tqdm(list(samples), desc=f"{what}: backbone", disable=not progress, leave=False):
        target = None
        if field_name is not None:
            if sample.get(field_name) is None:
                raise ValueError(f"{what} sample {sample.get('__key__')!r} has no {field_name!r}; "
                                 f"use a dataset with {field_name} maps for this task")
            target = torch.tensor(np.asarray(sample[field_name]))
        full = image_tensor(sample["image"])
        image = image_tensor(full, size)
        shown = (full[0].permute(1, 2, 0) * 255).round().byte().numpy()
        out.append(_Prepared(str(sample.get("__key__", len(out))), image, backbone_features(backbone, image),
                             target, shown))
    if not out:
        raise ValueError(f"{what}: the dataset is empty")
    return out


def _resolve(spec: UpsamplerSpec, backbone: nn.Module) -> tuple[bool, Upsample | None]:
    """(usable, upsample) of a spec for one backbone; a factory returning None marks it unusable."""
    if spec is None:
        return True, None
    if isinstance(spec, nn.Module):
        return True, spec.eval()
    if not callable(spec):
        raise TypeError(f"an upsampler spec must be None, an nn.Module or a factory, got {type(spec).__name__}")
    made = spec(backbone)
    if isinstance(made, nn.Module):
        made.eval()
    return made is not None, made


def _for_item(upsample: Upsample | StoredFeatures | None, item: _Prepared) -> Upsample | None:
    """The upsample to call for one sample: stored features are looked up by the sample's key."""
    return upsample.bound(item.key) if isinstance(upsample, StoredFeatures) else upsample


class _Timer:
    """Wall time spent inside upsampling calls, per upsampler."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, upsample: Upsample | None) -> Upsample | None:
        """``upsample`` with its calls timed under ``name``."""
        if upsample is None:
            return None
        self.seconds.setdefault(name, 0.0)

        def timed(features: torch.Tensor, image01: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            start = time.perf_counter()
            out = upsampled(features, image01, upsample, size)
            self.seconds[name] += time.perf_counter() - start
            return out

        return timed


def _pairs(items: Sequence[_Prepared], name: str, upsample: Upsample | None, settings: CompareSettings,
           timer: _Timer, keep: dict | None = None, full: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(features, target) per item, computed lazily so only one high-res map is alive at a time."""
    size = settings.output_size or settings.image_size
    for i, item in enumerate(items):
        feats = upsampled(item.features, item.image, timer.wrap(name, _for_item(upsample, item)), (size, size))
        if full and tuple(feats.shape[-2:]) != tuple(item.target.shape[-2:]):
            feats = F.interpolate(feats, size=tuple(item.target.shape[-2:]), mode="bilinear", align_corners=False)
        if keep is not None and i == 0:
            keep["features"] = feats[0]
        yield feats[0], item.target


def _run_probe_task(task: str, names: Sequence[str], usable: Mapping[str, Upsample | None], train: list[_Prepared],
                    test: list[_Prepared], settings: CompareSettings, timer: _Timer, num_classes: int | None,
                    progress: bool, stages: _Stages) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Fit and score a probe per upsampler; returns metrics, first-test-image features and predictions."""
    full = settings.probe_protocol == "full"

    def fit(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]):
        if task == "seg":
            return fit_seg_probe(pairs, num_classes, label_reduce=settings.label_reduce,
                                 pixels_per_image=settings.pixels_per_image, steps=settings.seg_steps,
                                 seed=settings.seed)
        return fit_depth_probe(pairs, pixels_per_image=settings.pixels_per_image, steps=settings.depth_steps,
                               seed=settings.seed)

    shared = fit(_pairs(train, "lowres", None, settings, _Timer())) if settings.probe_protocol == "lowres" else None
    metrics, features, predictions = {}, {}, {}
    for name in tqdm(names, desc=f"{task} probes", disable=not progress, leave=False):
        stages.start(f"{task} probe: {name}")
        if name not in usable:
            continue
        upsample = usable[name]
        probe = shared if shared is not None else fit(_pairs(train, name, upsample, settings, timer, full=full))
        keep: dict = {}
        test_pairs = _pairs(test, name, upsample, settings, timer, keep, full=full)
        if task == "seg":
            metrics[name] = evaluate_seg_probe(probe, test_pairs, resize_mode=settings.resize_mode)
            label = test[0].target
            predictions[name] = predict_segmentation(probe, keep["features"], tuple(label.shape),
                                                     settings.resize_mode).numpy()
        else:
            metrics[name] = evaluate_depth_probe(probe, test_pairs, resize_mode=settings.resize_mode)
            depth = test[0].target.float()
            raw = predict_depth(probe, keep["features"], tuple(depth.shape), settings.resize_mode)
            valid = torch.isfinite(depth) & (depth > 0)
            predictions[name] = align_scale_shift(raw[None], torch.where(valid, depth, 0)[None], valid[None])[0].numpy()
        features[name] = keep["features"]
    return metrics, features, predictions


def compare_upsamplers(
    backbone: nn.Module,
    upsamplers: Mapping[str, UpsamplerSpec],
    *,
    seg_train: Iterable[dict] | None = None,
    seg_test: Iterable[dict] | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    depth_train: Iterable[dict] | None = None,
    depth_test: Iterable[dict] | None = None,
    cam_images: Iterable[dict] | None = None,
    cam_backbone: nn.Module | None = None,
    cam_class_names: Sequence[str] | None = None,
    settings: CompareSettings = CompareSettings(),
    progress: bool = True,
    on_progress: ProgressFn | None = None,
) -> Comparison:
    """Score each upsampler on the tasks whose datasets are given; returns one row of metrics per upsampler.

    Datasets are iterables of samples (``{"__key__", "image", "label", "depth", "meta"}``). Segmentation
    and depth use ``backbone``; CAMs use ``cam_backbone`` (default ``backbone``), which needs a classifier
    head (e.g. ``load_backbone("efficientnet_lite0", tap="stride32")``); ``cam_class_names`` name its
    classes in the report. A factory spec is called once per
    backbone; where it returns None that upsampler's cells for the backbone's tasks stay empty.

    ``progress`` shows tqdm bars; ``on_progress`` (e.g. a Prefect progress artifact's update) is called as each
    stage starts with the fraction of stages done and a label (``"seg probe: bilinear"``), then with
    ``(1.0, "done")``. Stages are a split's backbone pass and each upsampler's probe or CAMs, not equal in time.
    """
    if not upsamplers:
        raise ValueError("no upsamplers to compare; pass e.g. {'low-res': None, 'bilinear': load_upsampler('bilinear')}")
    if (seg_train is None) != (seg_test is None) or (depth_train is None) != (depth_test is None):
        raise ValueError("probe tasks need both splits: pass seg_train with seg_test and depth_train with depth_test")
    if seg_train is not None and num_classes is None:
        raise ValueError("segmentation needs num_classes (the label values are 0..num_classes-1, 255 = ignore)")
    if seg_train is None and depth_train is None and cam_images is None:
        raise ValueError("no dataset given: pass seg_train/seg_test, depth_train/depth_test or cam_images")
    names = list(upsamplers)
    probe_tasks = (seg_train is not None) + (depth_train is not None)
    stages = _Stages(probe_tasks * (2 + len(names)) + (1 + len(names) if cam_images is not None else 0), on_progress)
    timer = _Timer()
    rows = {name: {"upsampler": name} for name in names}
    examples: dict[str, Example] = {}
    counts: dict[str, int] = {}
    kept_features: dict[str, torch.Tensor] = {}
    feature_image = None

    if seg_train is not None or depth_train is not None:
        dense = {}
        for name in names:
            ok, upsample = _resolve(upsamplers[name], backbone)
            if ok:
                dense[name] = upsample
        for task, train_set, test_set, field_name in (("seg", seg_train, seg_test, "label"),
                                                      ("depth", depth_train, depth_test, "depth")):
            if train_set is None:
                continue
            stages.start(f"{task} train: backbone")
            train = _prepare(train_set, backbone, settings.image_size, field_name, f"{task} train", progress)
            stages.start(f"{task} test: backbone")
            test = _prepare(test_set, backbone, settings.image_size, field_name, f"{task} test", progress)
            counts[f"{task}_train"], counts[f"{task}_test"] = len(train), len(test)
            metrics, features, predictions = _run_probe_task(task, names, dense, train, test, settings, timer,
                                                             num_classes, progress, stages)
            for name, values in metrics.items():
                if task == "seg":
                    rows[name].update(seg_miou=values["miou"], seg_acc=values["accuracy"])
                else:
                    rows[name].update(depth_rmse=values["rmse"], depth_delta1=values["delta1"])
            examples[task] = Example(test[0].raw, test[0].target.numpy(), predictions,
                                     f"first {task} test image")
            if not kept_features:
                kept_features, feature_image = features, test[0].raw

    if cam_images is not None:
        cam_net = cam_backbone if cam_backbone is not None else backbone
        if getattr(cam_net, "classifier", None) is None:
            raise ValueError("CAMs need a backbone with a classifier head; pass cam_backbone="
                             "load_backbone('efficientnet_lite0', tap='stride32')")
        stages.start("cam: backbone")
        items = _prepare(cam_images, cam_net, settings.image_size, None, "cam", progress)
        counts["cam"] = len(items)
        shown = (items[0].image[0].permute(1, 2, 0) * 255).round().byte().numpy()
        example = Example(shown, None)
        size = settings.cam_output_size or settings.output_size or settings.image_size
        for name in tqdm(names, desc="CAMs", disable=not progress, leave=False):
            stages.start(f"CAMs: {name}")
            ok, upsample = _resolve(upsamplers[name], cam_net)
            if not ok:
                continue
            y, o = [], []
            for i, item in enumerate(items):
                timed = timer.wrap(name, _for_item(upsample, item))
                outcome = explain(cam_net, item.image, timed, features=item.features,
                                  output_size=(size, size), resize_mode=settings.resize_mode)
                y.append(outcome.y)
                o.append(outcome.o)
                if i == 0:
                    example.outputs[name] = outcome.cam.numpy()
                    label = cam_class_names[outcome.class_index] if cam_class_names else "class"
                    example.caption = f"{label} ({outcome.class_index}), p = {outcome.y:.2f}"
            y_t, o_t = torch.tensor(y), torch.tensor(o)
            rows[name].update(cam_ad=average_drop(y_t, o_t), cam_ai=average_increase(y_t, o_t))
        examples["cam"] = example

    if kept_features:
        examples["features"] = Example(feature_image, None, {k: v.numpy() for k, v in kept_features.items()},
                                       "features of the first test image")
    for name in names:
        rows[name]["upsample_s"] = timer.seconds.get(name, 0.0)  # 0 for low-res
    stages.finish()
    return Comparison([rows[n] for n in names], examples, settings, counts,
                      list(class_names) if class_names is not None else None)
