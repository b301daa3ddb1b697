"""Settings as command-line flags: each a `--kebab-case` flag over its environment
variable (`python -m app`, `python -m app.batch`), validated together, one line per bad
setting."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from pydantic import ValidationError

from app.settings import Settings

SECRET_SETTINGS = {"CACHE_URL", "MODEL_CONTROL_TOKEN"}


def add_setting_flags(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """A `--kebab-case` flag for each named setting, overriding its environment variable."""
    for name in names:
        field = Settings.model_fields[name]
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar=name.upper(),
            default=None,
            help=f"{field.description} (env {name.upper()}, default {_default_text(field.default)})",
        )


def _default_text(value: object) -> str:
    return str(getattr(value, "value", value)) if value is not None else "unset"


def settings_from_flags(args: argparse.Namespace) -> Settings:
    """The environment's settings with the given setting flags over them; one line per bad
    setting and exit status 2 when they do not validate."""
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            if not error["loc"]:  # a rule between settings: its message names them
                sys.stderr.write(f"invalid settings: {error['msg'].removeprefix('Value error, ')}\n")
                continue
            setting = str(error["loc"][0]).upper()
            # A URL or token may carry a password: its value stays out of the output.
            shown = "(hidden)" if setting in SECRET_SETTINGS else repr(error.get("input"))
            sys.stderr.write(f"invalid setting {setting}={shown}: {error['msg']}\n")
        raise SystemExit(2) from None
