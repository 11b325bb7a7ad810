"""The README stays true: its Python snippets run as written, its command lines use real flags and defaults, its
front-door commands exist, and its deployment guide agrees with docs/deploy.md and prefect.yaml."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DEPLOY_GUIDE = (REPO / "docs" / "deploy.md").read_text()
# Snippets that need what no test machine has (a COCO-Stuff folder, credentials for a real bucket); they are
# skipped by a phrase of theirs, so that any other snippet added to the README is run.
NEEDS_EXTERNAL_DATA = ('ingest("cocostuff", "/data/cocostuff"', 'open_feature_store("s3://bucket/')


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.slow
def test_python_snippets_run_as_written_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets write files (chelsea-pca.png) where they run
    runnable = [b for b in _blocks(README, "python") if not any(p in b for p in NEEDS_EXTERNAL_DATA)]
    skipped = [b for b in _blocks(README, "python") if any(p in b for p in NEEDS_EXTERNAL_DATA)]
    assert len(runnable) >= 2 and len(skipped) == len(NEEDS_EXTERNAL_DATA)
    namespace: dict = {}  # one namespace: a snippet may continue the one before, as the README says it does
    for block in runnable:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (the README's own code)
    assert (tmp_path / "chelsea-pca.png").is_file()
    assert tuple(namespace["high"].shape) == (1, 112, 224, 224) and tuple(namespace["wide"].shape) == (1, 112, 300, 400)


def _commands(block: str) -> list[list[str]]:
    """The command lines of a block (continuation lines joined, comments dropped)."""
    lines = re.sub(r"\n\s+(?=\[|--)", " ", block).splitlines()
    return [shlex.split(line.split("#", 1)[0]) for line in lines if line.strip() and not line.startswith("#")]


def test_command_line_section_uses_real_flags_and_defaults():
    import importlib

    from featup.cli import build_parser
    from featup_flows.cli import FLOWS, flow_parser

    parsers = dict(build_parser()._subparsers._group_actions[0].choices)
    for command, (module, attribute) in FLOWS.items():
        parsers[command] = flow_parser(command, getattr(importlib.import_module(module), attribute))
    block = _blocks(_section(README, "Command line"), "")[0]
    checked = 0
    for words in _commands(block):
        assert words[0] == "featup" and words[1] in parsers, words
        options = {o: a for a in parsers[words[1]]._actions for o in a.option_strings}
        text = " ".join(words[2:])
        for optional, flag, value in re.findall(r"(\[?)(--[\w-]+)(?: ([^\s\]|.]+))?", text):
            assert flag in options, f"featup {words[1]}: no option {flag}"
            action = options[flag]
            if optional and value and not value.isupper() and action.default is not None:
                # an optional flag shown with a value shows the real default
                shown = " ".join(action.default) if isinstance(action.default, list) else str(action.default)
                assert shown.startswith(value) or value.startswith("{"), f"featup {words[1]} {flag}: {value} vs {shown}"
            if value.startswith("{"):  # a choice list shows every choice
                assert set(value.strip("{}").split(",")) == set(action.choices), flag
            checked += 1
    assert checked >= 20


def test_front_door_commands_exist_and_a_bogus_one_is_refused():
    usage = subprocess.run([str(REPO / "run")], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0
    for words in _commands(_blocks(_section(README, "The two commands"), "bash")[0]):
        assert words[0] == "./run" and f"./run {words[1]}" in usage.stdout
    bogus = subprocess.run([str(REPO / "run"), "bogus"], capture_output=True, text=True, timeout=60)
    assert bogus.returncode == 2 and "unknown command: bogus" in bogus.stderr


def test_deployment_guides_agree_with_each_other_and_with_prefect_yaml():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    # a flow's name is its function's name, dashed (train_jbu -> train-jbu)
    deployed = {f"{d['entrypoint'].split(':')[1].replace('_', '-')}/{d['name']}" for d in config["deployments"]}
    named = set(re.findall(r"[`'](\b(?:ingest|train-jbu|precompute-features|evaluate|demo)/[\w-]+)[`']",
                           README + DEPLOY_GUIDE))
    assert named and named <= deployed, named - deployed
    for guide in (README, DEPLOY_GUIDE):
        for block in _blocks(guide, "bash"):
            lines = block.splitlines()
            deploys = [i for i, line in enumerate(lines) if re.search(r"prefect (--no-prompt )?deploy\b", line)]
            for i in deploys:
                # FEATUP_CHECKOUT set where `prefect deploy` runs would freeze the deployer's path into every
                # deployment: both guides set it only on the worker's command line
                exported = [line for line in lines[:i] if re.match(r"\s*export .*FEATUP_CHECKOUT", line)]
                assert not exported, exported
            for line in lines:
                if "worker start" in line and "--pool" in line and "docker" not in line:
                    assert "FEATUP_CHECKOUT=" in line or any("export" in x and "FEATUP_CHECKOUT" in x
                                                            for x in lines), line
