"""Shards → backbone → upsampler → feature store: the work of one shard, with per-stage timings.

``precompute_shard`` is the unit of work the ``precompute_features`` flow runs once per shard. Its
stages overlap: DataLoader workers read and decode the next batch while the model runs, and a writer
thread stores the previous batch. A shard's completion record is written only after all its rows,
so an interrupted shard stays pending and a re-run redoes it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from featup.data.reading import make_loader, open_shards
from featup.data.samples import BadSample
from featup.store import FeatureStore

__all__ = ["ImplicitPerImage", "ShardReport", "StageTimes", "featurize", "pick_device", "precompute_shard"]

AMP_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class StageTimes:
    """Seconds spent in each stage (read/decode = waiting for the loader) and images processed."""

    read: float = 0.0
    backbone: float = 0.0
    upsample: float = 0.0
    write: float = 0.0
    total: float = 0.0
    images: int = 0

    def add(self, other: StageTimes) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class ShardReport:
    """What happened to one shard: rows written, bad samples with reasons, stage timings.

    ``bad`` are the manifest's samples recorded as bad in the store; ``unlisted`` are tar members the
    manifest does not list (nothing to store them in, so they are only reported); ``shard_error`` says
    where an unreadable shard broke (its unread samples are in ``bad`` with that reason).
    """

    shard: int
    written: int = 0
    bad: list[dict[str, str]] = field(default_factory=list)
    skipped: bool = False
    times: StageTimes = field(default_factory=StageTimes)
    unlisted: list[dict[str, str]] = field(default_factory=list)
    shard_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` → the GPU when one is present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is available; use device='auto' or 'cpu'")
    return torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: str):
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if AMP_DTYPES[amp] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


@torch.no_grad()
def featurize(
    backbone: nn.Module,
    upsampler: Callable[..., torch.Tensor],
    images: torch.Tensor,
    output_size: tuple[int, int],
    *,
    amp: str = "float32",
    times: StageTimes | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res backbone features and their upsampled version (float32) for a B×3×H×W batch in 0..1."""
    device = images.device
    times = times if times is not None else StageTimes()
    start = time.perf_counter()
    with _autocast(device, amp):
        low = backbone(backbone.normalize(images))
    _sync(device)
    middle = time.perf_counter()
    with _autocast(device, amp):
        high = upsampler(low, images, output_size)
    _sync(device)
    times.backbone += middle - start
    times.upsample += time.perf_counter() - middle
    return low.float(), high.float()


class ImplicitPerImage:
    """Upsampling by fitting an implicit model to each image of a batch, all fitted at once.

    The implicit upsampler is per image: ``fit_implicit_batch`` fits one MLP per image as batched matrix
    products, so a batch of B images costs far less than B separate fits. ``fit_options`` go to it
    (``recipe``, ``steps``, ``seed``, …).
    """

    def __init__(self, backbone: nn.Module, **fit_options: Any):
        self.backbone = backbone
        self.fit_options = {"progress": False, **fit_options}

    def __call__(self, features: torch.Tensor, images: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        from featup.training import fit_implicit_batch

        with torch.enable_grad():
            models = fit_implicit_batch(images, self.backbone, **self.fit_options)
        return torch.cat([model.to(images.device)(feats[None], image[None], output_size)
                          for model, feats, image in zip(models, features, images, strict=True)])


class _Writer:
    """A thread that stores batches while the next one is computed; re-raises its error on `close`."""

    def __init__(self, write: Callable[..., None], times: StageTimes):
        self._write = write
        self._times = times
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="featup-store-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                start = time.perf_counter()
                try:
                    self._write(*item)
                except BaseException as e:  # handed to the caller's thread in close()
                    self._error = e
                self._times.write += time.perf_counter() - start

    def put(self, *item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


@contextlib.contextmanager
def _model_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Run the model on ``threads`` CPU threads inside the block (None or a GPU: unchanged)."""
    if threads is None or device.type != "cpu":
        yield
        return
    if threads < 1:
        raise ValueError(f"model_threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(store: FeatureStore, shard: int, image_size: tuple[int, int], batch_size: int, num_workers: int,
             storage_options: Any) -> Iterator[dict[str, Any]]:
    source = store.info["manifest_url"]
    if num_workers > 0:
        # One shard cannot be split across workers by webdataset, so a worker reads it and the main
        # process computes: the overlap comes from the loader's prefetching.
        yield from make_loader(source, size=image_size, batch_size=batch_size, num_workers=1, shards=[shard],
                               storage_options=storage_options)
        return
    from featup.data.reading import collate_samples

    items: list[Any] = []
    for item in open_shards(source, size=image_size, shards=[shard], storage_options=storage_options):
        items.append(item)
        if sum(not isinstance(i, BadSample) for i in items) == batch_size:
            yield collate_samples(items, size=image_size)
            items = []
    if items:
        yield collate_samples(items, size=image_size)


def _listed_only(batch: dict[str, Any], listed: Callable[[str], bool], report: ShardReport) -> dict[str, Any]:
    """The batch without samples the manifest does not list (a tar member added by hand): those are reported."""
    keep = [i for i, key in enumerate(batch["__key__"]) if listed(key)]
    if len(keep) == len(batch["__key__"]):
        return batch
    for i, key in enumerate(batch["__key__"]):
        if i not in keep:
            report.unlisted.append({"key": key, "reason": "tar member not in the manifest: not stored"})
    index = torch.tensor(keep, dtype=torch.long)
    out = dict(batch)
    for name, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[name] = value.index_select(0, index)
        elif isinstance(value, list) and name != "bad":
            out[name] = [value[i] for i in keep]
    return out


def precompute_shard(
    store: FeatureStore,
    shard: int,
    backbone: nn.Module,
    upsampler: Callable[..., torch.Tensor],
    *,
    image_size: tuple[int, int] | None = None,
    batch_size: int = 8,
    device: str = "auto",
    amp: str = "float32",
    num_workers: int = 1,
    model_threads: int | None = None,
    redo: bool = False,
    storage_options: Any = None,
    on_batch: Callable[[int], None] | None = None,
) -> ShardReport:
    """Featurize, upsample and store every sample of one shard; skip it if already complete (unless ``redo``).

    Samples that cannot be decoded are marked bad in the store with their reason and reported; a shard
    that cannot be read to its end keeps the samples read before the damage and marks the rest bad with
    the shard's error; tar members the manifest does not list are reported and not stored. The shard is
    committed once every sample is written or marked bad, so damage never stops a dataset. Storage that
    cannot be reached raises instead (the shard stays pending for a retry or a re-run). ``model_threads`` sets the
    model's CPU threads for the shard: with a cheap upsampler on few cores, one fewer than the cores
    leaves the writer's compression a core of its own, which the whole pipeline gains from
    (bench/pipeline.py); the default keeps torch's setting. Results are the same for any setting up
    to float rounding; keep one setting per store for bit-identical re-runs.
    """
    report = ShardReport(shard)
    if store.is_complete(shard) and not redo:
        report.skipped = True
        return report
    spec = store.spec
    device_ = pick_device(device)
    backbone = backbone.to(device_).eval()
    if isinstance(upsampler, nn.Module):
        upsampler = upsampler.to(device_).eval()
    image_size = tuple(image_size or spec.size)
    times = report.times
    begin = time.perf_counter()
    with _model_threads(device_, model_threads), store.shard_writer(shard, redo=redo) as writer:
        def write(keys, high, low):
            writer.write(keys, high, low)

        sink = _Writer(write, times)
        try:
            ready = time.perf_counter()
            for batch in _batches(store, shard, image_size, batch_size, num_workers, storage_options):
                times.read += time.perf_counter() - ready
                for bad in batch["bad"]:
                    if bad.key is None:  # the shard itself broke: its unread samples are marked below
                        report.shard_error = bad.reason
                    elif writer.listed(bad.key):
                        writer.mark_bad(bad.key, bad.reason)
                        report.bad.append({"key": bad.key, "reason": bad.reason})
                    else:
                        report.unlisted.append({"key": bad.key, "reason": f"not in the manifest; {bad.reason}"})
                batch = _listed_only(batch, writer.listed, report)
                if batch["__key__"]:
                    images = batch["image"].to(device_, non_blocking=True)
                    low, high = featurize(backbone, upsampler, images, spec.size, amp=amp, times=times)
                    if spec.lowres_size is not None and tuple(low.shape[-2:]) != spec.lowres_size:
                        raise ValueError(f"the backbone gives a {tuple(low.shape[-2:])} grid but the store expects "
                                         f"lowres_size={spec.lowres_size}")
                    sink.put(batch["__key__"], high.cpu(), low.cpu() if spec.lowres_size else None)
                    report.written += len(batch["__key__"])
                    times.images += len(batch["__key__"])
                    if on_batch is not None:
                        on_batch(len(batch["__key__"]))
                ready = time.perf_counter()
        finally:
            sink.close()
        missing_reason = report.shard_error or "sample missing from the shard"
        for key in writer.missing():
            # A key in the manifest that the shard no longer yields (a truncated tar, a shard that is gone).
            writer.mark_bad(key, missing_reason)
            report.bad.append({"key": key, "reason": missing_reason})
    times.total = time.perf_counter() - begin
    return report
