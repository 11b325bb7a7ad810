"""The ``featup`` console command: the library's subcommands plus one subcommand per Prefect flow.

``featup <flow> --param value ...`` runs a flow in this process. With no ``PREFECT_API_URL`` set,
Prefect starts a temporary local API (SQLite) for the run, so no server is needed. A flow's options
are built from its signature and docstring, the same metadata the Prefect UI turns into a form.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import sys
import traceback
import types
import typing
from collections.abc import Sequence

from featup.cli import build_parser, run_command

# subcommand -> (module, flow function); imported only when that subcommand runs, since importing
# Prefect costs seconds.
FLOWS: dict[str, tuple[str, str]] = {
    "demo": ("featup_flows.demo", "demo"),
    "ingest": ("featup_flows.ingest", "ingest"),
    "train-jbu": ("featup_flows.train_jbu", "train_jbu"),
    "precompute-features": ("featup_flows.precompute", "precompute_features"),
    "evaluate": ("featup_flows.evaluate", "evaluate"),
}

_FLOW_HELP = {
    "demo": "the main job: shards from offline photos and a benchmark set, JBU features, evaluation report",
    "ingest": "turn a dataset layout (folder, COCO-Stuff, ADE20K, offline sets) into webdataset shards",
    "train-jbu": "train a JBU upsampler for a backbone on shards; resumable checkpoints to any URL",
    "precompute-features": "shards -> backbone -> upsampler -> zarr feature store, one task per shard",
    "evaluate": "linear probes and CAM faithfulness for upsamplers; report as files and Prefect artifacts",
}


def _docstring_params(doc: str | None) -> dict[str, str]:
    """Parameter descriptions from a Google-style ``Args:`` section."""
    found: dict[str, str] = {}
    if not doc or "Args:" not in doc:
        return found
    name = None
    for line in inspect.cleandoc(doc).split("Args:", 1)[1].splitlines():
        match = re.match(r"^\s{2,}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if match:
            name, found[match.group(1)] = match.group(1), match.group(2)
        elif name and line.startswith(" " * 6) and line.strip():
            found[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return found


def _unwrap_optional(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _add_parameter(parser: argparse.ArgumentParser, param: inspect.Parameter, annotation, help_text: str) -> None:
    flag = "--" + param.name.replace("_", "-")
    required = param.default is inspect.Parameter.empty
    default = None if required else param.default
    kwargs: dict = {"dest": param.name, "help": help_text + ("" if required else f" (default: {default!r})")}
    annotation = _unwrap_optional(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kwargs)
        return
    if origin is typing.Literal:
        kwargs["choices"] = list(typing.get_args(annotation))
    elif origin in (list, tuple, Sequence) or annotation in (list, tuple):
        item = (typing.get_args(annotation) or (str,))[0]
        kwargs.update(nargs="+", type=item if item in (int, float, str) else str)
    elif origin is dict or annotation is dict:
        kwargs["type"] = json.loads
        kwargs["metavar"] = "JSON"
    elif annotation in (int, float, str):
        kwargs["type"] = annotation
    parser.add_argument(flag, required=required, default=default, **kwargs)


def flow_parser(command: str, flow) -> argparse.ArgumentParser:
    """An argparse parser for a Prefect flow's parameters (types, defaults and help from its signature)."""
    fn = flow.fn
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n", 1)[0]
    parser = argparse.ArgumentParser(prog=f"featup {command}", description=summary)
    hints = typing.get_type_hints(fn)
    helps = _docstring_params(doc)
    for param in inspect.signature(fn).parameters.values():
        _add_parameter(parser, param, hints.get(param.name, str), helps.get(param.name, ""))
    return parser


# Exit statuses of a flow subcommand beyond 0 (done): 2 the run failed (one line says why and what to do),
# 3 the run finished but recorded bad samples (listed in its summary), 130 interrupted.
EXIT_FAILED, EXIT_BAD_SAMPLES, EXIT_INTERRUPTED = 2, 3, 130


class _WithoutTraceback(logging.Formatter):
    """A console formatter that leaves tracebacks out (the records keep them for the API's log handler)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


@contextlib.contextmanager
def _console_without_tracebacks() -> typing.Iterator[None]:
    """Prefect's console lines without the traceback walls a failing task logs (``--debug`` keeps them)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    handlers = {id(h): h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    saved = {key: h.formatter for key, h in handlers.items()}
    for h in handlers.values():
        h.setFormatter(_WithoutTraceback(h.formatter))
    try:
        yield
    finally:
        for key, h in handlers.items():
            h.setFormatter(saved[key])


def _bad_samples(result: object) -> str:
    """What a flow's summary says was recorded bad ("" when nothing): samples, and tar members it could not store."""
    if not isinstance(result, dict):
        return ""
    bad = result.get("bad", 0)
    count = len(bad) if isinstance(bad, list) else int(bad or 0)
    unlisted = int(result.get("unlisted", 0) or 0)
    parts = [f"{count} bad samples recorded"] if count else []
    if unlisted:
        parts.append(f"{unlisted} tar members not in the manifest reported")
    return " and ".join(parts)


def run_flow(command: str, argv: Sequence[str]) -> int:
    """Parse ``argv`` for a flow subcommand and run the flow locally.

    A failure prints one line (what went wrong and what to do) and exits 2; ``--debug``, or
    PREFECT_LOGGING_LEVEL=DEBUG, shows the tracebacks too.
    """
    module_name, attribute = FLOWS[command]
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A loaded 2-core machine can take longer than Prefect's default to start the temporary API.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    flow = getattr(importlib.import_module(module_name), attribute)
    parser = flow_parser(command, flow)
    parser.add_argument("--debug", action="store_true", help="on failure, show tracebacks (default: one line)")
    args = vars(parser.parse_args(argv))
    debug = args.pop("debug") or os.environ.get("PREFECT_LOGGING_LEVEL", "").upper() == "DEBUG"
    from prefect import tags

    from featup.io import describe
    from featup_flows.local_api import crash_stale_runs, local_api, run_tags

    if not debug:
        # Storage clients torn down at exit after a failure (s3fs/zarr coroutines never awaited) would print
        # "Exception ignored in ..." tracebacks under the one-line error.
        atexit.register(setattr, sys, "unraisablehook", lambda unraisable: None)
    try:
        with contextlib.ExitStack() as stack:
            if not debug:
                stack.enter_context(_console_without_tracebacks())
            stack.enter_context(local_api())
            for run_id in crash_stale_runs():
                print(f"featup {command}: marked flow run {run_id} crashed (its process is gone)", file=sys.stderr)
            with tags(*run_tags()):
                result = flow(**args)
    except KeyboardInterrupt:
        print(f"featup {command}: interrupted; re-running resumes where it stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            traceback.print_exc()
        print(f"featup {command}: error: {describe(e)}" + ("" if debug else " (--debug shows the traceback)"),
              file=sys.stderr)
        return EXIT_FAILED
    if result is not None:
        print(json.dumps(result, indent=2, default=str) if isinstance(result, (dict, list)) else result)
    bad = _bad_samples(result)
    if bad:
        print(f"featup {command}: finished with {bad} (see the summary above)", file=sys.stderr)
        return EXIT_BAD_SAMPLES
    return 0


def build_full_parser() -> argparse.ArgumentParser:
    """The library parser with the flow subcommands listed (their options are parsed by `run_flow`)."""
    parser = build_parser()
    sub = parser._subparsers._group_actions[0]
    for command, help_text in _FLOW_HELP.items():
        sub.add_parser(command, help=f"[flow] {help_text}", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``featup`` console command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FLOWS:
        return run_flow(argv[0], argv[1:])
    return run_command(build_full_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
