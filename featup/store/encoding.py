"""How feature values are stored: dtype encodings (bfloat16 as uint16 bits) and compression codecs.

Pure numpy: this module never imports torch, yet takes torch tensors, converted through their
``.numpy()``. The pipeline casts features to the stored dtype on its device, so what arrives here is
usually already encoded and passes through untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr.codecs

from featup.store.spec import FeatureSpec

# zarr v3 has no bfloat16: keep the top 16 bits of each float32 (exactly a bfloat16) in uint16.
BF16_ENCODING = "bfloat16 stored as uint16 bit patterns: float32 = bits << 16"
BF16_NAN_BITS = 0x7FC0


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype zarr stores for a feature dtype."""
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def fill_value(dtype: str) -> Any:
    """NaN in the stored encoding, so rows never written read as NaN, not as plausible zeros."""
    return BF16_NAN_BITS if dtype == "bfloat16" else np.nan


def as_array(values: Any) -> np.ndarray:
    """A numpy array from a numpy array or a torch tensor (any device; bfloat16, which numpy lacks, widened
    exactly to float32)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        if not values.dtype.is_floating_point or str(values.dtype) == "torch.bfloat16":
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def encode(values: Any, dtype: str) -> np.ndarray:
    """Features (tensor or array) → the stored array, rounded to nearest even like torch's casts.

    An array already in the stored dtype (float16, float32, or uint16 bfloat16 bits) is returned as is.
    """
    arr = as_array(values)
    if arr.dtype == storage_dtype(dtype):
        return arr
    if dtype != "bfloat16":
        return arr.astype(dtype, copy=False)
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(arr), np.uint16(BF16_NAN_BITS), rounded)


def decode(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored array → floats (bfloat16 widens to float32 exactly; other dtypes pass through)."""
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored


def compressors(spec: FeatureSpec) -> Any:
    """The zarr v3 compressor for the spec's ``compression`` choice (None = uncompressed)."""
    level = spec.compression_level
    if spec.compression == "zstd":
        return zarr.codecs.ZstdCodec(level=level)
    if spec.compression == "blosc-zstd":
        return zarr.codecs.BloscCodec(cname="zstd", clevel=level, shuffle="shuffle")
    if spec.compression == "blosc-lz4":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=level, shuffle="shuffle")
    return None
