"""`python -m app.batch`: embed many images on Ray Data with the server's own backends.

    python -m app.batch photos/ --out photos.embeddings
    python -m app.batch urls.txt --out urls.embeddings --actors 1,4 --address ray://head:10001
    MODEL_ID=facebook/dinov2-small python -m app.batch table.parquet --column path --out t.emb

Sources as `python -m app.client` takes them: a folder (every image file below it), a text
file of paths or URLs (one a line), or a column of a CSV or Parquet file. The model and its
settings come from the environment and flags exactly as the server reads them (MODEL_ID,
POOLING_STRATEGY, NORMALIZE_EMBEDDINGS, RUNTIME, QUANTIZE, ...; or --serving-json), and so
do the image limits and the URL policy (MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ALLOW_URLS,
ALLOW_PRIVATE_URLS, URL_ALLOWLIST, FETCH_TIMEOUT_S).

--out is a folder of Parquet parts (id, source, embedding: the client's schema); images
that fail are listed in `<out>.failures.jsonl` and never stop the job; running the same
command again embeds only the ids not yet in the folder. Without --address (or
RAY_ADDRESS) Ray starts on this machine; with one, the job runs on that cluster, whose
nodes must all see the sources, the model folder and --out (a shared filesystem)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from app.cpus import usable_cpus
from app.installed import is_installed
from app.settings.flags import add_setting_flags, settings_from_flags
from app.settings.model import ModelSettings, QuantizeSetting, RuntimeSetting
from app.settings.server import ServerSettings

# The server's settings that apply to a batch job: the model's, and how images are read.
IMAGE_INPUT_SETTINGS = (
    "allow_urls",
    "allow_private_urls",
    "url_allowlist",
    "fetch_timeout_s",
    "max_concurrent_fetches",
    "max_image_bytes",
    "max_image_pixels",
)
MIB = 1024 * 1024


def actor_pool(text: str) -> tuple[int, int]:
    """'N' (a fixed pool) or 'MIN,MAX' (autoscaling between them)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or MIN,MAX") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or not 1 <= sizes[0] <= sizes[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or MIN,MAX with 1 <= MIN <= MAX")
    return sizes[0], sizes[1]


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return int(text)


def decodes_in_actors(args: argparse.Namespace) -> bool:
    """--decode-in auto: in the actors on CPU (one process's threads share the cores, no
    pixels cross the object store: measured faster); in tasks beside GPU actors, where the
    decoding must scale on CPUs apart from the GPUs."""
    if args.decode_in == "auto":
        return not args.gpus_per_actor
    return args.decode_in == "actors"


def actor_threads(args: argparse.Namespace) -> int:
    """TORCH_THREADS=0 for an actor: the CPUs it reserves, or, on this machine with the
    decoding in the actors, its share of the usable cores (its decoding threads share them,
    as in the server). Beside decoding tasks an actor keeps to its reservation: with more
    threads it fights the tasks for the cores (measured: 1000 photos in 18.5 s with two
    threads, 16.5 s with one, on two cores)."""
    if args.address or not decodes_in_actors(args):
        return max(1, math.ceil(args.cpus_per_actor))
    return max(1, usable_cpus() // args.actors[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source", type=Path, help="a folder, a text file of URLs/paths, or a .csv/.parquet file"
    )
    parser.add_argument("--column", help="the CSV/Parquet column of URLs or paths (default: the first)")
    parser.add_argument("--out", type=Path, required=True, help="output folder of Parquet parts")
    parser.add_argument(
        "--actors", type=actor_pool, default=(1, 1), help="model copies: N, or MIN,MAX to autoscale"
    )
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs each model copy reserves")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs each model copy reserves")
    parser.add_argument(
        "--images-per-task",
        type=positive,
        default=64,
        help="images per block: a decoding task's or an actor call's, and the unit of retry",
    )
    parser.add_argument(
        "--decode-in",
        choices=["auto", "actors", "tasks"],
        default="auto",
        help="where images are decoded: in the model actors' threads, or in Ray tasks of their own "
        "(auto: actors on CPU, tasks with --gpus-per-actor)",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="a Ray cluster to run on (env RAY_ADDRESS); default: start Ray on this machine",
    )
    parser.add_argument(
        "--object-store-mb",
        type=int,
        default=1024,
        help="object store of the Ray started on this machine (MiB); a cluster keeps its own",
    )
    parser.add_argument("--serving-json", type=Path, help="a model folder's serving.json to apply")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_setting_flags(parser, (*ModelSettings.model_fields, *IMAGE_INPUT_SETTINGS))
    return parser


def model_settings(args: argparse.Namespace) -> tuple[ServerSettings, ModelSettings]:
    """(server settings, model settings): the environment, the flags, then --serving-json."""
    from pydantic import ValidationError

    from app.inference.model_configs import LOAD_AT_STARTUP, RepositoryError, read_settings_file

    settings = settings_from_flags(args)
    model = settings.model
    if args.serving_json is not None:
        try:
            own = read_settings_file(args.serving_json)
            own.pop(LOAD_AT_STARTUP, None)
            model = ModelSettings(**{**model.model_dump(), **own})
        except (RepositoryError, ValidationError) as exc:
            sys.exit(f"invalid --serving-json: {exc}")
    return settings.server, model


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not is_installed("ray"):
        sys.exit("python -m app.batch needs Ray Data: pip install -r requirements-batch.txt")
    server, model = model_settings(args)
    if args.gpus_per_actor:
        # The driver may have no GPU: RUNTIME=auto decided there would measure its CPU.
        if model.runtime == RuntimeSetting.OPENVINO or model.quantize == QuantizeSetting.INT8:
            sys.exit("--gpus-per-actor needs RUNTIME=torch: OpenVINO and QUANTIZE=int8 run on the CPU")
        model = model.model_copy(update={"runtime": RuntimeSetting.TORCH})
    # Ray's usage statistics go to Ray's servers (and poll a Prometheus on localhost): not
    # from a job that embeds someone's images, unless they ask for it.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray

    from app.batch.pipeline import PipelineOptions, PoolTooLarge, embed_items, fit_pool, plan_model
    from app.batch.sink import done_ids, failures_file
    from app.client import read_items
    from app.embedding.preflight import StartupError
    from app.errors import BadRequest

    items = read_items(args.source, args.column)
    done = done_ids(args.out)
    todo = [item for item in items if item.id not in done]
    if not todo:
        print(f"nothing to embed: all {len(items)} ids are in {args.out}", file=sys.stderr)
        return 0
    try:
        plan = plan_model(model, threads=actor_threads(args))
    except (StartupError, BadRequest) as exc:
        sys.exit(f"cannot embed with these settings: {exc}")
    options = PipelineOptions(
        args.actors,
        args.cpus_per_actor,
        args.gpus_per_actor,
        args.images_per_task,
        progress=not args.no_progress,
        decode_in_actors=decodes_in_actors(args),
    )
    started_ray = not ray.is_initialized()
    if started_ray:
        if args.address:
            ray.init(address=args.address, log_to_driver=False)
        else:
            ray.init(
                object_store_memory=args.object_store_mb * MIB, include_dashboard=False, log_to_driver=False
            )
    try:
        if not args.address:  # a cluster may grow; this machine's CPUs will not
            try:
                options = fit_pool(options, ray.cluster_resources().get("CPU", 0.0))
            except PoolTooLarge as exc:
                sys.exit(str(exc))
        summary = embed_items(todo, args.out, server, plan, options)
    finally:
        if started_ray:
            ray.shutdown()
    print(
        f"{summary.embedded} embedded in {summary.seconds:.1f} s "
        f"({summary.embedded / max(summary.seconds, 1e-9):.1f} img/s), {len(done)} already done, "
        f"{len(summary.failures)} failed (listed in {failures_file(args.out)}); output in {args.out}",
        file=sys.stderr,
    )
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
