"""The ``featup`` console command: the library's subcommands plus one subcommand per Prefect flow.

``featup <flow> --param value ...`` runs a flow in this process. With no ``PREFECT_API_URL`` set,
Prefect starts a temporary local API (SQLite) for the run, so no server is needed. A flow's options
are built from its signature and docstring, the same metadata the Prefect UI turns into a form, and
checked against it (types, choices, limits, the flow module's ``check_arguments``) before any API
starts: a bad argument costs an import, not a server start, and prints one line naming the flag.

The console is quiet by default: Prefect's own INFO lines (server banners, "Beginning flow run",
"Finished in state ...") stay in the API's logs and the flows' own lines are printed with a time stamp,
one per stage or shard; ``--debug`` shows Prefect's full console output and tracebacks.
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

from featup.cli import ArgumentParser, build_parser, run_command
from featup_flows.params import ParameterError, flag

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


def _help(help_text: str, required: bool, default) -> str:
    """The option's help; the default is added unless the docstring already says it (one default per help)."""
    if required or "default" in help_text.lower():
        return help_text
    shown = " ".join(default) if isinstance(default, (list, tuple)) else default
    return f"{help_text} (default: {shown})"


def _add_parameter(parser: argparse.ArgumentParser, param: inspect.Parameter, annotation, help_text: str) -> None:
    required = param.default is inspect.Parameter.empty
    default = None if required else param.default
    kwargs: dict = {"dest": param.name, "help": _help(help_text, required, default)}
    annotation = _unwrap_optional(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        parser.add_argument(flag(param.name), action=argparse.BooleanOptionalAction, default=default, **kwargs)
        return
    if origin is typing.Literal:
        kwargs["choices"] = list(typing.get_args(annotation))
    elif origin in (list, tuple, Sequence) or annotation in (list, tuple):
        item = (typing.get_args(annotation) or (str,))[0]
        if typing.get_origin(item) is typing.Literal:  # the help lists the choices; the usage line stays short
            kwargs.update(nargs="+", choices=list(typing.get_args(item)), metavar="NAME")
        else:
            kwargs.update(nargs="+", type=item if item in (int, float, str) else str)
    elif origin is dict or annotation is dict:
        kwargs["type"] = json.loads
        kwargs["metavar"] = "JSON"
    elif annotation in (int, float, str):
        kwargs["type"] = annotation
    parser.add_argument(flag(param.name), required=required, default=default, **kwargs)


def flow_parser(command: str, flow) -> argparse.ArgumentParser:
    """An argparse parser for a Prefect flow's parameters (types, defaults and help from its signature)."""
    fn = flow.fn
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n", 1)[0]
    parser = ArgumentParser(prog=f"featup {command}", description=summary)
    hints = typing.get_type_hints(fn)  # Annotated[...] stripped: argparse needs the plain type
    helps = _docstring_params(doc)
    for param in inspect.signature(fn).parameters.values():
        _add_parameter(parser, param, hints.get(param.name, str), helps.get(param.name, ""))
    return parser


def check_arguments(flow, module, args: dict[str, typing.Any]) -> None:
    """Raise :class:`ParameterError` for the first argument the flow would reject: its signature's types,
    choices and limits (the pydantic checks Prefect runs at the start of a run, and the UI form shows),
    then the flow module's own ``check_arguments`` (names, paths, combinations)."""
    import pydantic

    hints = typing.get_type_hints(flow.fn, include_extras=True)
    for name, value in args.items():
        try:
            pydantic.TypeAdapter(hints.get(name, typing.Any)).validate_python(value)
        except pydantic.ValidationError as e:
            error = e.errors()[0]
            raise ParameterError(name, f"{error['msg'][0].lower()}{error['msg'][1:]} (got {error['input']!r})") from None
    own = getattr(module, "check_arguments", None)
    if own is not None:
        own(args)


# Exit statuses of a flow subcommand beyond 0 (done): 2 the run failed (one line says why and what to do),
# 3 the run finished but recorded bad samples (listed in its summary), 130 interrupted.
EXIT_FAILED, EXIT_BAD_SAMPLES, EXIT_INTERRUPTED = 2, 3, 130


class _QuietConsole(logging.Formatter):
    """A console line: time, the message, and WARNING/ERROR said as such; no traceback (the records keep them
    for the API's log handler, which the UI shows)."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname_prefix)s%(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelname_prefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _from_featup(record: logging.LogRecord) -> bool:
    """Keep a console record unless it is one of Prefect's own lines but a warning (e.g. a retry to come).

    Prefect's INFO lines are banners and state changes; its ERROR lines repeat, once per run and task, the
    failure that the command's last line says once. Prefect's engine logs on the same run loggers as the
    flows, so the record's source file tells them apart; a flow's ``print`` reaches the console through
    Prefect's ``print_as_log``, which is kept.
    """
    import prefect

    source = os.path.abspath(record.pathname)
    if not source.startswith(str(prefect.__module_path__)) or source.endswith(os.path.join("logging", "loggers.py")):
        return True
    return record.levelno == logging.WARNING


@contextlib.contextmanager
def _quiet_console() -> typing.Iterator[None]:
    """The flows' own lines on the console, without Prefect's INFO chatter or tracebacks (``--debug`` keeps them)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    handlers = {id(h): h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    saved = {key: h.formatter for key, h in handlers.items()}
    for h in handlers.values():
        h.setFormatter(_QuietConsole())
        h.addFilter(_from_featup)
    try:
        yield
    finally:
        for key, h in handlers.items():
            h.setFormatter(saved[key])
            h.removeFilter(_from_featup)


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
    """Parse and check ``argv`` for a flow subcommand, then run the flow locally.

    A bad argument is reported before any Prefect API starts; a failure prints one line (what went wrong
    and what to do) and exits 2; ``--debug``, or PREFECT_LOGGING_LEVEL=DEBUG, shows tracebacks and
    Prefect's own console lines too.
    """
    module_name, attribute = FLOWS[command]
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's client-side telemetry (and its first-run notice on a terminal) is decided when prefect is
    # imported: this setting is the only switch for it.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # A loaded 2-core machine can take longer than Prefect's default to start the temporary API.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    module = importlib.import_module(module_name)
    flow = getattr(module, attribute)
    parser = flow_parser(command, flow)
    parser.add_argument("--debug", action="store_true", help="on failure, show tracebacks and Prefect's own "
                                                            "console lines (default: one line)")
    args = vars(parser.parse_args(argv))
    debug = args.pop("debug") or os.environ.get("PREFECT_LOGGING_LEVEL", "").upper() == "DEBUG"
    try:
        check_arguments(flow, module, args)
    except ParameterError as e:
        print(f"featup {command}: error: {e.for_cli()}", file=sys.stderr)
        return EXIT_FAILED
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
                stack.enter_context(_quiet_console())
            print(f"featup {command}: starting a local Prefect API" if _needs_local_api() else
                  f"featup {command}: reporting to {os.environ.get('PREFECT_API_URL') or 'the configured API'}",
                  file=sys.stderr)
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
        print(json.dumps(_on_report_scale(result), indent=2, default=str, ensure_ascii=False)
              if isinstance(result, (dict, list)) else result)
    bad = _bad_samples(result)
    if bad:
        print(f"featup {command}: finished with {bad} (see the summary above)", file=sys.stderr)
        return EXIT_BAD_SAMPLES
    return 0


def _on_report_scale(result: typing.Any) -> typing.Any:
    """A flow's summary as printed: metric rows (evaluate, demo) on the report's scale and rounding, keyed by its
    headers, so the terminal shows the numbers the report shows (13.85 %, not 0.13851...)."""
    if isinstance(result, dict) and isinstance(result.get("rows"), list):
        from featup.eval.report import table_records

        return {**result, "rows": table_records(result["rows"])}
    return result


def _needs_local_api() -> bool:
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


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
