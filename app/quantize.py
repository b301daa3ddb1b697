"""`python -m app.quantize`: build the int8 OpenVINO model ahead of time, as QUANTIZE=int8
builds it at start-up, and print how close it stays to float32 on the held-out quarter of
the calibration images. Serve the folder it writes with RUNTIME=openvino MODEL_ID=<out>."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.quantize", description=__doc__)
    parser.add_argument("--model", help="model folder or hub id (default: the embedded MobileNetV2)")
    parser.add_argument("--images", type=Path, required=True, help="calibration images (at least 8)")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write (must not exist or be empty)"
    )
    parser.add_argument("--max-cosine-drop", type=float, default=0.005, help="QUANTIZE_MAX_COSINE_DROP")
    parser.add_argument(
        "--min-neighbours-kept", type=float, default=1.0, help="QUANTIZE_MIN_NEIGHBOURS_KEPT (1: every one)"
    )
    parser.add_argument("--cache", type=Path, help="MODEL_CACHE_DIR (for the embedded default model)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("nncf").setLevel(logging.WARNING)

    from app.embedding.model_source import resolve_source
    from app.embedding.openvino_export import build_export, local_folder
    from app.settings.model import ModelSettings

    fields = dict(
        model_id=args.model,
        model_dir="/nonexistent",
        runtime="openvino",
        quantize="int8",
        calibration_dir=args.images,
        quantize_max_cosine_drop=args.max_cosine_drop,
        quantize_min_neighbours_kept=args.min_neighbours_kept,
    )
    if args.cache:
        fields["model_cache_dir"] = args.cache
    try:
        settings = ModelSettings(**fields)
    except ValidationError as exc:
        parser.error("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))
    source = resolve_source(settings)
    try:
        info = build_export(local_folder(source), source.model_id, settings, args.out)
    except ValueError as exc:  # too few calibration images, an unusable model folder
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fidelity = info.fidelity
    assert fidelity is not None  # build_export measured it: QUANTIZE=int8
    print(
        f"held-out calibration images ({fidelity['images']}), {info.default_pooling} pooling, against "
        f"float32: min cosine {fidelity['min_cosine']:.5f}, mean cosine {fidelity['mean_cosine']:.5f}, "
        f"nearest neighbour kept {fidelity['neighbours_kept']}/{fidelity['images']}"
    )
    print(json.dumps({"fidelity": fidelity}))
    from app.embedding.quantization import check_fidelity_gate

    try:
        check_fidelity_gate(fidelity, args.max_cosine_drop, args.min_neighbours_kept)
    except ValueError as exc:
        shutil.rmtree(args.out, ignore_errors=True)  # not a model to serve: nothing is left to serve
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"int8 model of {info.model_id} written to {args.out}")
    print(f"serve it with: RUNTIME=openvino MODEL_ID={args.out} python -m app")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
