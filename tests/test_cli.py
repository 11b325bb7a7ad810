"""The featup console command: help everywhere, the PCA job, clear errors (one line, exit 2, before any server)."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_backbones_lists_the_registry_with_aligned_channels(capsys):
    assert main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], {line.split()[0]: line for line in lines[1:8]}
    assert "dinov2_s14" in rows and "stride16 (16)*" in rows["efficientnet_lite0"]
    column = header.index("channels")
    assert rows["efficientnet_lite0"][column:].startswith("112, 1280 ")
    assert rows["resnet50"][column:].startswith("1024, 2048 ") and rows["vit_s16"][column:].startswith("384 ")
    # every column starts where its header does
    for title in ("timm architecture", "taps (stride)", "real weights"):
        assert all(row[header.index(title) - 2:header.index(title)] == "  " for row in rows.values()), title


def test_pca_writes_one_titled_png_per_photo_named_by_its_settings(tmp_path, capsys):
    assert main(["pca", "--photos", "chelsea", "coffee", "--size", "64", "--upsamplers", "lowres", "bilinear",
                 "--out", str(tmp_path)]) == 0
    for name in ("chelsea", "coffee"):
        image = np.asarray(Image.open(tmp_path / f"{name}-efficientnet_lite0-64px.png"))
        assert image.shape[0] > 64 + 8 and image.shape[2] == 3  # a title band over the 64 px panels
        panel = (image.shape[1] - 2 * 4) / 3  # image | lowres | bilinear, side by side, 4 px apart
        assert panel == int(panel) >= 64
        assert (image[:4] == 255).all() and (image[:image.shape[0] - 64] < 128).any()  # dark title text
    assert "replacing" not in capsys.readouterr().out
    # another size is another picture; the same settings again say what they replace
    assert main(["pca", "--photos", "chelsea", "--size", "96", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "chelsea-efficientnet_lite0-64px.png").exists()
    assert (tmp_path / "chelsea-efficientnet_lite0-96px.png").exists()
    assert main(["pca", "--photos", "chelsea", "--size", "96", "--out", str(tmp_path)]) == 0
    assert "replacing 1 of the same name" in capsys.readouterr().out
    # so is another tap
    assert main(["pca", "--photos", "chelsea", "--size", "64", "--tap", "stride32", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "chelsea-efficientnet_lite0-stride32-64px.png").exists()
    assert "replacing" not in capsys.readouterr().out


def test_pca_fits_the_implicit_upsampler_to_each_photo(tmp_path):
    assert main(["pca", "--photos", "chelsea", "--size", "64", "--upsamplers", "bilinear", "implicit",
                 "--out", str(tmp_path)]) == 0
    image = np.asarray(Image.open(tmp_path / "chelsea-efficientnet_lite0-64px.png")).astype(float)
    width = (image.shape[1] - 3 * 4) // 4  # image | lowres | bilinear | implicit, 4 px apart
    panels = [image[-64:, i * (width + 4):i * (width + 4) + width] for i in range(4)]
    # the fitted panel shows features, in the same PCA colours as bilinear's, and not bilinear's picture
    assert panels[3].std() > 10 and 2 < np.abs(panels[3] - panels[2]).mean() < 60


def test_pca_on_image_files_and_clear_error_naming_a_corrupt_one(tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["pca", str(tmp_path / "a.png"), "--size", "32", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "a-efficientnet_lite0-32px.png").exists()
    capsys.readouterr()
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    assert main(["pca", str(tmp_path / "bad.jpg"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"featup pca: error: {tmp_path / 'bad.jpg'}: not a readable image") and " object at 0x" not in err
    assert err.count("\n") == 1


def test_weights_that_are_not_a_checkpoint_give_one_line(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.jpg")
    assert main(["pca", "--photos", "chelsea", "--weights", str(tmp_path / "x.jpg"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featup pca: error: ") and err.count("\n") == 1 and "x.jpg" in err


def test_missing_weights_error_reaches_the_user(capsys, monkeypatch):
    monkeypatch.delenv("FEATUP_WEIGHTS_DIR", raising=False)
    assert main(["pca", "--photos", "chelsea", "--backbone", "dino_s16", "--out", "memory://x"]) == 2
    err = capsys.readouterr().err
    assert "no weights for backbone 'dino_s16'" in err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "featup.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "pca" in result.stdout


def _option_helps(parser: argparse.ArgumentParser):
    """(subcommand, option, help text) of every option of a parser and its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for _, option, text in _option_helps(sub):
                    yield name, option, text
        elif action.help:  # as --help prints it, %(default)s filled in
            yield parser.prog, "/".join(action.option_strings) or action.dest, parser._get_formatter()._expand_help(action)


def test_help_texts_give_each_default_once():
    import importlib

    from featup_flows.cli import FLOWS, flow_parser

    parsers = [build_parser()]
    for command, (module, attribute) in FLOWS.items():
        parsers.append(flow_parser(command, getattr(importlib.import_module(module), attribute)))
    seen = 0
    for parser in parsers:
        for command, option, text in _option_helps(parser):
            seen += 1
            assert text.lower().count("default") <= 1, f"{command} {option}: {text}"
    assert seen > 60  # every flow's options were looked at
    # a default the docstring does not give is added once, lists without brackets
    evaluate = flow_parser("evaluate", importlib.import_module("featup_flows.evaluate").evaluate)
    helps = {option: text for _, option, text in _option_helps(evaluate)}
    assert helps["--upsamplers"].endswith("(default: lowres bilinear jbu)")
    assert helps["--output-size"].count("default: image_size") == 1


# (argv, what the one line must say): each is refused before any Prefect API starts.
BAD_ARGUMENTS = [
    (["evaluate", "--upsamplers", "bilinear", "nosuch", "--cam-shards", "x"], "invalid choice: 'nosuch'"),
    (["evaluate", "--cam-shards", "{tmp}", "--image-size", "112"], "--image-size: input should be a multiple of 32"),
    (["evaluate"], "--cam-shards: nothing to evaluate: give --seg-shards, --depth-shards and/or --cam-shards"),
    (["evaluate", "--seg-shards", "{tmp}/nowhere"], "--seg-shards: {tmp}/nowhere does not exist"),
    (["evaluate", "--cam-shards", "{tmp}", "--upsamplers", "jbu", "jbu"], "--upsamplers: an upsampler is named twice"),
    (["evaluate", "--cam-shards", "{tmp}", "--backbone", "nosuch"], "--backbone: unknown backbone 'nosuch'"),
    (["ingest", "--source", "{tmp}/empty", "--output", "{tmp}/out"], "--source: no image files"),
    (["ingest", "--source", "-", "--output", "{tmp}/out"], "--source: the folder layout reads a dataset folder"),
    (["ingest", "--source", "{tmp}", "--output", "{tmp}/out", "--layout", "photos"], "pass --source -"),
    (["ingest", "--source", "-", "--output", "{tmp}/out", "--layout", "photos", "--options", '{{"n": 4}}'],
     "--options: the photos layout takes no option 'n'; it takes crops_per_photo, image_format, seed, size"),
    (["ingest", "--source", "-", "--output", "{tmp}/out", "--layout", "photos", "--shard-samples", "0"],
     "--shard-samples: input should be greater than or equal to 1"),
    (["train-jbu", "--shards", "{tmp}", "--checkpoint", "c.pt", "--device", "gpu"], "--device: string should match"),
    (["precompute-features", "--shards", "{tmp}/nowhere", "--store", "{tmp}/s"], "--shards: {tmp}/nowhere does not exist"),
    (["precompute-features", "--shards", "{tmp}", "--store", "{tmp}/s", "--backbone", "nosuch"],
     "--backbone: unknown backbone 'nosuch'"),
    (["demo", "--image-size", "100"], "--image-size: input should be a multiple of 32"),
    (["demo", "--upsamplers", "low-res"], "invalid choice: 'low-res'"),
    (["pca", "--size", "0"], "argument --size: must be at least 16 px, got 0"),
    (["pca", "--size", "-5"], "argument --size: must be at least 16 px"),
    (["pca", "--upsamplers", "nosuch"], "--upsamplers: unknown upsampler 'nosuch'"),
]


@pytest.mark.parametrize(("argv", "says"), BAD_ARGUMENTS, ids=[" ".join(a[:3]) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_fail_in_one_line_with_status_2_before_any_server(argv, says, tmp_path, capsys):
    from featup_flows.cli import main as flow_main

    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    try:
        status = flow_main(argv)
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"featup {argv[0]}: error: "), captured.err
    assert says.format(tmp=tmp_path) in captured.err
    assert "Prefect API" not in captured.err  # the line printed when a run starts its API


@pytest.mark.parametrize("command", ["evaluate", "ingest", "train-jbu", "demo"])
def test_flow_help_loads_neither_torch_nor_a_server(command):
    """`--help` imports the flow (Prefect) but not what its tasks need: seconds, not ten."""
    probe = ("import sys\nfrom featup_flows.cli import main\ntry:\n    main([sys.argv[1], '--help'])\n"
             "except SystemExit as e:\n    assert e.code == 0\nprint(sorted({'torch', 'timm', 'matplotlib'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe, command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"usage: featup {command}" in done.stdout and done.stdout.strip().endswith("[]"), done.stdout[-300:]


def test_bad_argument_from_the_console_command_is_one_line_without_traceback(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path)}
    featup = Path(sys.executable).parent / "featup"
    done = subprocess.run([str(featup), "evaluate", "--upsamplers", "bilinear", "nosuch"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and "Traceback" not in done.stderr
    assert not (tmp_path / "prefect.db").exists()  # no API (and so no database) was started


def _featup(*argv: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "DO_NOT_TRACK")}
    return subprocess.run([str(Path(sys.executable).parent / "featup"), *argv], capture_output=True, text=True,
                          env={**env, "PREFECT_HOME": str(home)}, timeout=600)


@pytest.mark.slow
def test_a_flow_command_prints_its_stages_and_no_prefect_chatter(tmp_path):
    done = _featup("ingest", "--source", "-", "--layout", "photos", "--output", str(tmp_path / "photos"),
                   "--options", '{"size": 32}', home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "featup ingest: starting a local Prefect API"
    assert re.fullmatch(r"\d\d:\d\d:\d\d photos: 9 samples in 1 shards at .*", lines[1]) and len(lines) == 2, lines
    for chatter in ("Beginning flow run", "Finished in state", "View at", "docs.prefect.io", "temporary server",
                    "telemetry"):
        assert chatter not in done.stderr + done.stdout, chatter
    # a failure during the run: one line after the start, not Prefect's repetitions of it
    (tmp_path / "not-shards").mkdir()
    failed = _featup("evaluate", "--cam-shards", str(tmp_path / "not-shards"), "--image-size", "64",
                     home=tmp_path / "home")
    assert failed.returncode == 2 and failed.stdout == ""
    errors = failed.stderr.splitlines()[1:]
    assert len(errors) == 1 and errors[0].startswith("featup evaluate: error: no shard manifest at "), errors


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
