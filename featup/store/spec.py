"""What a feature store holds and how its features were made, and how many bytes that will take."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

DTYPES = {"float16": 2, "bfloat16": 2, "float32": 4}
# name → default level. blosc-lz4 is the default because it encodes about as fast as storage takes bytes;
# the measured sizes and speeds of each are in docs/bench/store.md (bench/store.py).
COMPRESSIONS = {"blosc-lz4": 5, "blosc-zstd": 3, "zstd": 3, "none": 0}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One feature store = one (dataset, backbone, upsampler): the user's choices plus provenance.

    It is also the recipe of the models that make the features: a pipeline worker rebuilds backbone and
    upsampler from it (``featup.pipeline.build_models``) and checks their weights against it.
    ``backbone`` is the backbone's id (its name, plus ``-<tap>`` when not the default tap); ``weights``
    names its weights portably ("random" for none) and ``weights_sha256`` hashes them;
    ``checkpoint_sha256`` hashes the upsampler's weights (None without); ``upsampler_options`` are the
    options of an upsampler made per image (the implicit fit).
    ``size`` is the stored high-res (H, W); ``lowres_size`` also stores the backbone's grid when set.
    ``dtype``: float16 (default), bfloat16 (stored as its uint16 bits, decoded on read) or float32.
    ``pca_components`` stores k PCA coefficients per pixel instead of all ``channels`` (basis kept
    beside the data). Chunks are ``rows_per_chunk`` images × ``channels_per_chunk`` (None = all) × H × W.
    ``compression``: blosc-lz4 (default), blosc-zstd, zstd or none; ``compression_level`` None = its default.
    """

    dataset: str
    backbone: str
    upsampler: str
    channels: int
    size: tuple[int, int]
    dtype: str = "float16"
    lowres_size: tuple[int, int] | None = None
    tap: str = ""
    normalization: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint_sha256: str | None = None
    weights: str = "random"
    weights_sha256: str | None = None
    upsampler_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    compression: str = "blosc-lz4"
    compression_level: int | None = None
    rows_per_chunk: int = 1
    channels_per_chunk: int | None = None
    pca_components: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for field in ("dataset", "backbone", "upsampler"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _NAME_RE.match(value):
                raise ValueError(
                    f"{field}={value!r} must be a non-empty name of letters, digits and _ . + - "
                    "(it becomes a folder of the store)"
                )
        object.__setattr__(self, "size", _pair("size", self.size))
        if self.lowres_size is not None:
            object.__setattr__(self, "lowres_size", _pair("lowres_size", self.lowres_size))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, got {self.compression!r}")
        if self.compression_level is None:
            object.__setattr__(self, "compression_level", COMPRESSIONS[self.compression])
        if self.channels < 1 or self.rows_per_chunk < 1:
            raise ValueError("channels and rows_per_chunk must be positive")
        if self.pca_components is not None and not 1 <= self.pca_components <= self.channels:
            raise ValueError(f"pca_components must lie in 1..channels={self.channels}, got {self.pca_components}")
        if self.channels_per_chunk is not None and not 1 <= self.channels_per_chunk <= self.stored_channels:
            raise ValueError(f"channels_per_chunk must lie in 1..{self.stored_channels}")
        json.dumps([self.normalization, self.upsampler_options, self.extra])  # all are stored as attributes

    @property
    def stored_channels(self) -> int:
        """Channels actually stored per pixel (k with PCA, else ``channels``)."""
        return self.pca_components or self.channels

    @property
    def itemsize(self) -> int:
        """Bytes per stored value."""
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, stored in the group attributes."""
        out = dataclasses.asdict(self)
        out["size"] = list(self.size)
        out["lowres_size"] = list(self.lowres_size) if self.lowres_size else None
        return out

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`."""
        body = dict(body)
        body["size"] = tuple(body["size"])
        body["lowres_size"] = tuple(body["lowres_size"]) if body.get("lowres_size") else None
        return cls(**body)


def _pair(name: str, value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    h, w = (value, value) if isinstance(value, int) else tuple(value)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(h), int(w)


@dataclasses.dataclass(frozen=True)
class StorageEstimate:
    """Bytes a feature store will need before compression, by part."""

    num_samples: int
    features: int
    lowres: int
    other: int
    spec: FeatureSpec

    @property
    def total(self) -> int:
        """All parts together."""
        return self.features + self.lowres + self.other

    def __str__(self) -> str:
        s = self.spec
        h, w = s.size
        what = f"{s.pca_components} PCA coefficients (of {s.channels} ch)" if s.pca_components else f"{s.channels} ch"
        lines = [
            f"{s.dataset} / {s.backbone} / {s.upsampler}: {self.num_samples:,} samples × {what} × {h}×{w} "
            f"× {s.dtype} ({s.itemsize} B) = {human_bytes(self.features)} of high-res features",
        ]
        if self.lowres:
            lh, lw = s.lowres_size or (0, 0)
            lines.append(f"  + low-res {lh}×{lw}: {human_bytes(self.lowres)}")
        lines.append(
            f"  total ≈ {human_bytes(self.total)} before compression (compression saves only ~15-30% on "
            "float features: plan for about this much)"
        )
        return "\n".join(lines)


def human_bytes(n: float) -> str:
    """``4.56 TB (4.15 TiB)``: decimal units as disks are sold, binary in brackets."""
    if n < 1000:
        return f"{int(n)} B"
    k = min(int(math.log(n, 1000)), 5)
    kb = min(int(math.log(n, 1024)), 5)
    units = "kMGTP"
    return f"{n / 1000**k:.3g} {units[k - 1]}B ({n / 1024**kb:.3g} {units[kb - 1].upper()}iB)"


def estimate_bytes(spec: FeatureSpec, num_samples: int) -> StorageEstimate:
    """Bytes the store for ``num_samples`` samples will need (print it before a long run)."""
    h, w = spec.size
    features = num_samples * spec.stored_channels * h * w * spec.itemsize
    lowres = num_samples * spec.channels * math.prod(spec.lowres_size) * spec.itemsize if spec.lowres_size else 0
    pca = (spec.pca_components + 1) * spec.channels * 4 if spec.pca_components else 0
    # keys (≈ 24 B each) and one status byte per sample
    other = num_samples * 25 + pca
    return StorageEstimate(num_samples, features, lowres, other, spec)
