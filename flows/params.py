"""Parameter checks shared by the flows: each names the parameter it rejects and says what to do instead.

A flow calls its module's ``check_arguments`` first, so a run started from the UI fails at once with a
clear message; the ``featup`` CLI calls the same function before it starts any Prefect API, and shows the
parameter as its flag (``--seg-shards``) instead of its Python name. Types, choices and limits that a
form can show (``Literal``, ``Field(ge=..., multiple_of=...)``) live in the flows' signatures instead.
"""

from __future__ import annotations

import os
import re

__all__ = ["ParameterError", "check_backbone", "check_local_input", "flag"]


class ParameterError(ValueError):
    """A flow parameter that cannot work; ``parameter`` is its Python name, the message says what to do.

    Other parameters a message mentions are written in backquotes (`` `cam_shards` ``), so that the CLI
    can show them as flags (:meth:`for_cli`) and the UI as the form's names.
    """

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message.replace('`', '')}")
        self.parameter = parameter
        self.message = message

    def for_cli(self) -> str:
        """The message with every parameter named as its flag: ``--seg-shards: ...``."""
        return f"{flag(self.parameter)}: " + re.sub(r"`(\w+)`", lambda m: flag(m.group(1)), self.message)


def flag(parameter: str) -> str:
    """The CLI flag of a flow parameter: ``seg_shards`` -> ``--seg-shards``."""
    return "--" + parameter.replace("_", "-")


def check_backbone(parameter: str, name: str) -> None:
    """A registered backbone or a timm model name; anything else is a typo worth stopping for."""
    from featup.backbones import list_backbones

    if name in list_backbones():
        return
    import timm

    if timm.is_model(name):
        return
    raise ParameterError(parameter, f"unknown backbone {name!r}: use one of {', '.join(list_backbones())} "
                                    "(`featup backbones` lists them) or a timm model name")


def check_local_input(parameter: str, url: str | None) -> None:
    """A local input path must exist; URLs (s3://, ...) are left to the run, which has their credentials."""
    if url is None or "://" in url or url == "-":
        return
    if not os.path.exists(url):
        raise ParameterError(parameter, f"{url} does not exist: check the path")
