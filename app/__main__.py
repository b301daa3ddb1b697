"""`python -m app`: settings from the environment and flags, then uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from app.settings import Settings
from app.settings.flags import add_setting_flags, settings_from_flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Image embedding server (Open Inference Protocol V2). "
        "Each flag overrides the environment variable of the same name.",
    )
    add_setting_flags(parser, Settings.model_fields)
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    """Parse flags, merge them over the environment, and exit with one line per bad setting."""
    args = build_parser().parse_args(argv)
    return settings_from_flags(args)


def export_to_environment(settings: Settings) -> None:
    """Worker processes read their settings from the environment: put the flags there."""
    for name, value in settings.model_dump(mode="json", exclude_none=True).items():
        os.environ[name.upper()] = str(value)


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(argv)

    import uvicorn

    from app.inference.model_configs import RepositoryError, model_configs
    from app.logs import configure_logging
    from app.shutdown import SHUTDOWN_GRACE_S

    configure_logging(settings.log_level, settings.log_format)
    try:
        configs = model_configs(settings.server, settings.model)
    except RepositoryError as exc:
        sys.stderr.write(f"invalid model repository: {exc}\n")
        raise SystemExit(2) from None
    if settings.model_repository is None:
        # One model: a setting that cannot work stops the process now, not after the server
        # has started (a repository's models are checked as each loads; the others serve on).
        from app.embedding.preflight import StartupError, check_model_settings

        try:
            check_model_settings(settings.model)
        except StartupError as exc:
            sys.stderr.write(f"invalid settings: {exc}\n")
            raise SystemExit(2) from None
    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    if settings.workers > 1:
        # Each worker process loads its own model copy and batcher (small models: two
        # single-thread processes outrun one process with two torch threads).
        decide_runtime_once(settings)
        export_to_environment(settings)
        uvicorn.run(
            "app.server:create_app_from_environment", factory=True, workers=settings.workers, **common
        )
    elif len(configs) > 1:
        serve_models(settings, common)
    else:
        serve_with_model_on_main_thread(settings, common)


def decide_runtime_once(settings: Settings) -> None:
    """RUNTIME=auto measures the runtimes at start-up: here, once, before the workers start
    (all measuring at once on the same cores would measure each other); they read the
    cached decision."""
    from app.embedding.auto_runtime import needs_choice, resolve

    if settings.model_repository is None and needs_choice(settings.model):
        resolve(settings.model)


def serve_models(settings: Settings, uvicorn_options: dict) -> None:
    """Several models: HTTP on the main thread, each model's loop on a thread of its own."""
    import uvicorn

    from app.server import create_app
    from app.shutdown import DrainingServer

    app = create_app(settings)
    DrainingServer(uvicorn.Config(app, **uvicorn_options), app.state.models, settings.shutdown_drain_s).run()
    # (A repository's model that fails to load is marked failed; the others serve on.)


def serve_with_model_on_main_thread(settings: Settings, uvicorn_options: dict) -> None:
    """HTTP in a thread, the model loop on the main thread (see app.inference.model_thread)."""
    import signal
    import threading

    import uvicorn

    from app.inference.model_thread import MainThreadHost
    from app.server import create_app
    from app.shutdown import DrainingServer

    host = MainThreadHost()
    app = create_app(settings, model_host=host)
    server = DrainingServer(
        uvicorn.Config(app, **uvicorn_options), app.state.models, settings.shutdown_drain_s
    )
    failures: list[str] = []

    def stop_after_failed_start(message: str) -> None:
        failures.append(message)
        server.should_exit = True  # no drain: the server was never ready

    app.state.on_failed_start = stop_after_failed_start
    serving = threading.Event()
    serving.set()

    def serve_http() -> None:
        try:
            server.run()
        finally:
            serving.clear()

    # uvicorn installs signal handlers only on the main thread: install the drain here.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.handle_exit)
    http = threading.Thread(target=serve_http, name="http")
    http.start()
    host.serve(keep_going=serving)
    http.join()
    if failures:
        sys.stderr.write(f"start-up failed: {failures[0]}\n")
        raise SystemExit(3)


if __name__ == "__main__":
    main()
