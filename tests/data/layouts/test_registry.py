"""The layout registry: lookup by name, errors that list what exists, new layouts plug in."""

from __future__ import annotations

import numpy as np
import pytest

from featup._registry import Registry
from featup.data.layouts import (
    LayoutSource,
    _registry,
    get_layout,
    ingest,
    list_layouts,
    register_layout,
)


def test_builtin_layouts_are_registered():
    assert {"folder", "cocostuff", "ade20k"} <= set(list_layouts())
    assert list_layouts() == sorted(list_layouts())


def test_unknown_layout_lists_the_registered_ones():
    # the shared registry's message, as for backbones and upsamplers; a KeyError for lookups, a ValueError for arguments
    for error in (KeyError, ValueError):
        with pytest.raises(error, match="unknown dataset layout 'imagenet'; registered: .*ade20k.*cocostuff.*folder"):
            get_layout("imagenet")


def test_duplicate_name_rejected():
    def folder(root, *, storage_options=None):
        raise AssertionError("never read")

    with pytest.raises(ValueError, match="dataset layout 'folder' is already registered by featup.data.layouts"):
        register_layout("folder")(folder)
    assert get_layout("folder").__module__ == "featup.data.layouts.folder"


@pytest.fixture
def scratch_layouts(monkeypatch):
    """A registry of the test's own, so the layouts a test registers do not outlive it."""
    monkeypatch.setattr(_registry, "LAYOUTS", Registry("dataset layout"))


def test_a_registered_layout_can_be_ingested(tmp_path, scratch_layouts):
    @register_layout("test-solid-colours")
    def solid(root, *, storage_options=None):
        samples = (
            {"__key__": f"c{i}", "image": np.full((16, 16, 3), i, np.uint8), "label": None, "depth": None, "meta": {}}
            for i in range(3)
        )
        return LayoutSource(samples, ["x"], {"layout": "solid"})

    assert list_layouts() == ["test-solid-colours"]
    manifest = ingest("test-solid-colours", "unused", str(tmp_path / "out"), progress=False)
    assert manifest.num_samples == 3 and manifest.classes == ["x"] and manifest.meta == {"layout": "solid"}
    register_layout("test-solid-colours")(solid)  # the same reader again (a re-import) is no clash
