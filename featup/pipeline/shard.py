"""One image's way from a shard to a zarr chunk: the work of one shard, with per-stage timings.

``precompute_shard`` is the unit of work the ``precompute-features`` flow runs once per shard:

1. the shard's tar is streamed from storage (``iter_shard``) and its samples decoded and resized by
   ``num_workers`` threads, a batch ahead of the model (pinned memory when the model is on a GPU);
2. the backbone and the upsampler run on the device (``featurize``), and their outputs are cast there
   to the store's dtype, then copied to the host (non-blocking, into pinned memory, on CUDA);
3. a writer thread stores the batch's rows (``ShardWriter.write``) while the next batch is computed;
4. once every sample of the shard is written or recorded bad, the shard's completion record is written
   (``ShardWriter.commit``). An interrupted shard stays pending and a re-run redoes it.

The models it is given are the store's recipe (``featup.pipeline.models``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from featup.data.reading import (
    DecodeSample,
    collate_samples,
    decode_in_threads,
    iter_shard,
)
from featup.data.samples import BadSample
from featup.io import StorageRoot
from featup.pipeline._compute import (
    AMP_DTYPES,
    StageTimes,
    cpu_threads,
    featurize,
    pick_device,
)
from featup.store import FeatureStore

__all__ = ["PrecomputeOptions", "ShardReport", "precompute_shard"]

_STORED = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


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


@dataclass(frozen=True)
class PrecomputeOptions:
    """How this host runs shards; what they compute is the store's spec, not this.

    ``weights`` and ``checkpoint`` say where this host finds the backbone weights and the upsampler
    checkpoint the store records (None: the usual lookup, the checkpoint featup ships); they are checked
    against the store's hashes. ``num_workers`` threads decode images (0: decode inline); ``model_threads``
    sets the model's CPU threads (None: torch's).
    """

    batch_size: int = 8
    device: str = "auto"
    amp: str = "float32"
    num_workers: int = 1
    model_threads: int | None = None
    weights: StorageRoot | None = None
    checkpoint: StorageRoot | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"batch_size must be ≥ 1 and num_workers ≥ 0, got {self.batch_size} and {self.num_workers}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {self.amp!r}")

    def run_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`precompute_shard` these options set."""
        return {"batch_size": self.batch_size, "device": self.device, "amp": self.amp,
                "num_workers": self.num_workers, "model_threads": self.model_threads}


class _Writer:
    """A thread that stores batches while the next one is computed; re-raises its error on `close`.

    A batch arrives as host tensors in the stored dtype with the CUDA event their copy completes at (None
    on the CPU); the thread waits on it, so the compute thread never does.
    """

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
                    keys, high, low, copied = item
                    if copied is not None:
                        copied.synchronize()
                    self._write(keys, _stored_array(high), None if low is None else _stored_array(low))
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


def _to_host(values: torch.Tensor) -> torch.Tensor:
    """``values`` on the host: on CUDA a non-blocking copy into pinned memory (wait on an event before use)."""
    if values.device.type != "cuda":
        return values.contiguous()
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    return host


def _stored_array(values: torch.Tensor) -> np.ndarray:
    """A host tensor in the stored dtype as the numpy array zarr stores (bfloat16 as its uint16 bits)."""
    if values.dtype == torch.bfloat16:
        return values.view(torch.int16).numpy().view(np.uint16)
    return values.numpy()


def _read_batches(url: str, storage_options: Any, image_size: tuple[int, int], batch_size: int,
                  num_workers: int, pin: bool) -> Generator[dict[str, Any], None, None]:
    """Batches of one shard's decoded samples (BadSamples in ``batch["bad"]``), decoded by ``num_workers`` threads."""
    decode = DecodeSample(image_size)
    raw = iter_shard(url, storage_options=storage_options)
    samples = decode_in_threads(raw, decode, num_workers) if num_workers > 0 else map(decode, raw)
    items: list[Any] = []
    for item in samples:
        items.append(item)
        if sum(not isinstance(i, BadSample) for i in items) == batch_size:
            yield _collate(items, image_size, pin)
            items = []
    if items:
        yield _collate(items, image_size, pin)


def _collate(items: list[Any], image_size: tuple[int, int], pin: bool) -> dict[str, Any]:
    batch = collate_samples(items, size=image_size)
    if pin and batch["image"].numel():
        batch["image"] = batch["image"].pin_memory()  # so the copy to the GPU can overlap the compute
    return batch


def _ahead(batches: Generator[dict[str, Any], None, None], depth: int = 2) -> Iterator[dict[str, Any]]:
    """``batches`` produced by a thread up to ``depth`` ahead of the consumer; its error is raised here."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def offer(item: Any) -> bool:
        """Queue ``item`` unless the consumer stopped meanwhile (never blocks for good)."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(end)
        except BaseException as exc:  # handed to the consumer
            offer(exc)
        finally:
            batches.close()  # its tar stream and decode threads end here, not whenever it is collected

    thread = threading.Thread(target=produce, name="featup-shard-reader", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


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
    source: StorageRoot | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ShardReport:
    """Featurize, upsample and store every sample of one shard; skip it if already complete (unless ``redo``).

    The shard's tar is read from beside the manifest the store was made from, with the store's storage
    options, or from ``source`` (the dataset folder with its own options). ``num_workers`` threads decode
    its images while the model runs (0: decode inline, between batches).

    Samples that cannot be decoded are marked bad in the store with their reason and reported; a shard
    that cannot be read to its end keeps the samples read before the damage and marks the rest bad with
    the shard's error; tar members the manifest does not list are reported and not stored. The shard is
    committed once every sample is written or marked bad, so damage never stops a dataset. Storage that
    cannot be reached raises instead (the shard stays pending for a retry or a re-run). ``model_threads``
    sets the model's CPU threads for the shard (default: torch's setting). Results are the same for any
    setting up to float rounding; keep one setting per store for bit-identical re-runs.
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
    # PCA stores project float32 features on the host; the others take the stored dtype from the device.
    dtype = torch.float32 if spec.pca_components else _STORED[spec.dtype]
    if source is None:
        url, read_options = store.shard_url(shard), store.root.options
    else:
        url, read_options = source.join(store.info["shards"][shard]["name"]).url, source.options
    cuda = device_.type == "cuda"
    times = report.times
    begin = time.perf_counter()
    with cpu_threads(device_, model_threads), store.shard_writer(shard, redo=redo) as writer:
        sink = _Writer(writer.write, times)
        batches = _read_batches(url, read_options, image_size, batch_size, num_workers, pin=cuda)
        try:
            ready = time.perf_counter()
            for batch in (_ahead(batches) if num_workers > 0 else batches):
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
                    low, high = featurize(backbone, upsampler, images, spec.size, amp=amp, times=times, dtype=dtype)
                    if spec.lowres_size is not None and tuple(low.shape[-2:]) != spec.lowres_size:
                        raise ValueError(f"the backbone gives a {tuple(low.shape[-2:])} grid but the store expects "
                                         f"lowres_size={spec.lowres_size}")
                    high = _to_host(high)
                    low = _to_host(low) if spec.lowres_size else None
                    copied = None
                    if cuda:
                        copied = torch.cuda.Event()
                        copied.record()
                    sink.put(batch["__key__"], high, low, copied)
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
