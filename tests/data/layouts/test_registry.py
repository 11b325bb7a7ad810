"""The layout registry: lookup by name, errors that list what exists, new layouts plug in."""

from __future__ import annotations

import numpy as np
import pytest

from featup.data.layouts import LayoutSource, _registry, get_layout, ingest, list_layouts, register_layout


def test_builtin_layouts_are_registered():
    assert {"folder", "cocostuff", "ade20k"} <= set(list_layouts())


def test_unknown_layout_lists_the_known_ones():
    with pytest.raises(KeyError, match="known layouts: .*ade20k.*cocostuff.*folder"):
        get_layout("imagenet")


@pytest.fixture
def forget_test_layouts():
    yield
    _registry._LAYOUTS.pop("test-solid-colours", None)


def test_a_registered_layout_can_be_ingested(tmp_path, forget_test_layouts):
    @register_layout("test-solid-colours")
    def solid(root, *, storage_options=None):
        samples = (
            {"__key__": f"c{i}", "image": np.full((16, 16, 3), i, np.uint8), "label": None, "depth": None, "meta": {}}
            for i in range(3)
        )
        return LayoutSource(samples, ["x"], {"layout": "solid"})

    manifest = ingest("test-solid-colours", "unused", str(tmp_path / "out"), progress=False)
    assert manifest.num_samples == 3 and manifest.classes == ["x"] and manifest.meta == {"layout": "solid"}
    with pytest.raises(ValueError, match="already registered"):
        register_layout("test-solid-colours")(solid)
