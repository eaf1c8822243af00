"""Shared pieces of the command line: its errors, the offline switch, flag parsers and common options.

Nothing here imports torch or a Hugging Face library, so ``--offline`` takes effect before the first HF import.
"""

from __future__ import annotations

import logging
import os
import sys

import click

log = logging.getLogger("relight_stream")

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class NotImplementedYet(click.ClickException):
    """A command whose stage is not built yet: exit code 2, never a fake success."""

    exit_code = 2

    def __init__(self, command: str, detail: str = "") -> None:
        super().__init__(f"`relight-stream {command}` is not implemented yet{': ' + detail if detail else ''}")


class RunFailed(click.ClickException):
    """A run that stopped on an environment fault it cannot work around (disk full): a clear message, exit 1."""

    exit_code = 1


class RunError(click.ClickException):
    """A bad run (config, inputs, unavailable backend): a clear message and exit code 2."""

    exit_code = 2


def apply_offline(offline: bool) -> None:
    """Set the Hugging Face offline variables; must run before any HF library is imported."""
    if not offline:
        return
    for var in OFFLINE_VARS:
        os.environ[var] = "1"
    loaded = [m for m in ("huggingface_hub", "transformers", "diffusers") if m in sys.modules]
    if loaded:  # their constants are read at import; too late to change them for this process
        log.warning("--offline set after %s was imported; offline mode may not apply to it", ", ".join(loaded))


def inputs_or_none(values: tuple[str, ...]) -> list[str] | None:
    return list(values) if values else None


def parse_mix(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    mix = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        if not sep:
            raise click.BadParameter(f"expected name=weight pairs like soft=0.5,shadow=0.5, got {part!r}")
        try:
            mix[name.strip()] = float(weight)
        except ValueError:
            raise click.BadParameter(f"weight of {name!r} is not a number: {weight!r}") from None
    return mix


def parse_floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None, help="YAML file overriding defaults."
)
dry_run_option = click.option("--dry-run", is_flag=True, default=None, help="Print the plan; write nothing.")
