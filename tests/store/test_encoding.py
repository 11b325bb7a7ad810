"""bfloat16 as uint16 bits, rounded exactly like torch; tensors of any dtype accepted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featup.store.encoding import BF16_NAN_BITS, as_array, decode, encode, fill_value, storage_dtype


def test_bfloat16_matches_torch_rounding_including_edge_values():
    values = np.concatenate(
        [
            np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100,
            np.array([0.0, -0.0, 1.0, 1 + 2**-8, 1 + 3 * 2**-8, np.inf, -np.inf, 3.4e38, 1e-40], np.float32),
        ]
    )
    bits = encode(values, "bfloat16")
    assert bits.dtype == np.uint16
    np.testing.assert_array_equal(decode(bits, "bfloat16"), torch.from_numpy(values).bfloat16().float().numpy())


def test_nan_stays_nan_and_is_the_fill():
    bits = encode(np.array([np.nan, 1.0], np.float32), "bfloat16")
    assert bits[0] == BF16_NAN_BITS == fill_value("bfloat16")
    assert np.isnan(decode(bits, "bfloat16")[0])
    assert np.isnan(fill_value("float16"))


def test_storage_dtypes():
    assert storage_dtype("bfloat16") == np.uint16 and storage_dtype("float16") == np.float16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_tensors_of_any_float_dtype_convert_exactly(dtype):
    t = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    np.testing.assert_array_equal(as_array(t).astype(np.float64), t.double().numpy())
    np.testing.assert_array_equal(encode(t, "float16"), t.half().numpy())
