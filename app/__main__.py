"""`python -m app`: settings from the environment and flags, then uvicorn."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from app.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Image embedding server (Open Inference Protocol V2). "
        "Each flag overrides the environment variable of the same name.",
    )
    for name, field in Settings.model_fields.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar=name.upper(),
            default=None,
            help=f"{field.description} (env {name.upper()}, default {_default_text(field.default)})",
        )
    return parser


def _default_text(value: object) -> str:
    return getattr(value, "value", value) if value is not None else "unset"


def load_settings(argv: list[str] | None = None) -> Settings:
    """Parse flags, merge them over the environment, and exit with one line per bad setting."""
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            setting = str(error["loc"][0]).upper() if error["loc"] else "?"
            given = error.get("input")
            sys.stderr.write(f"invalid setting {setting}={given!r}: {error['msg']}\n")
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(argv)

    import uvicorn

    from app.logs import configure_logging
    from app.server import create_app

    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
