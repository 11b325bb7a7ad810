"""The featup console command: help everywhere, the PCA job, clear errors."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featup.cli import build_parser, main


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"backbones", "pca"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: featup" in capsys.readouterr().out


def test_backbones_lists_the_registry(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "dinov2_s14" in out and "stride16" in out


def test_pca_writes_one_png_per_photo(tmp_path):
    assert main(["pca", "--photos", "chelsea", "coffee", "--size", "64", "--out", str(tmp_path)]) == 0
    for name in ("chelsea", "coffee"):
        image = np.asarray(Image.open(tmp_path / f"{name}.png"))
        assert image.shape[0] == 64 and image.shape[2] == 3
        assert image.shape[1] > 2 * 64  # image | low-res | bilinear, side by side


def test_pca_on_image_files_and_clear_error_for_a_corrupt_one(tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["pca", str(tmp_path / "a.png"), "--size", "32", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "a.png").exists()
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    assert main(["pca", str(tmp_path / "bad.jpg"), "--out", str(tmp_path / "out")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_missing_weights_error_reaches_the_user(capsys, monkeypatch):
    monkeypatch.delenv("FEATUP_WEIGHTS_DIR", raising=False)
    assert main(["pca", "--photos", "chelsea", "--backbone", "dino_s16", "--out", "memory://x"]) == 2
    err = capsys.readouterr().err
    assert "no weights for backbone 'dino_s16'" in err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "featup.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "pca" in result.stdout


def test_flow_commands_offer_debug_and_say_what_was_recorded_bad(capsys):
    from featup_flows.cli import _bad_samples
    from featup_flows.cli import main as flow_main

    with pytest.raises(SystemExit) as info:
        flow_main(["precompute-features", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--debug" in out and "--redis-url" in out
    assert _bad_samples({"bad": 3, "unlisted": 1}) == "3 bad samples recorded and 1 tar members not in the manifest reported"
    assert _bad_samples({"bad": [{"key": "a"}]}) == "1 bad samples recorded"  # ingest lists them
    assert _bad_samples({"bad": 0, "unlisted": 0}) == "" and _bad_samples(None) == ""
