"""Fidelity of every runtime x precision against torch float32, on the real MobileNetV2
(or --model's folder or bench shape) and real photos (bench/photos.py: 16 photos and their mirror images,
none of them used for int8 calibration): min and mean cosine between the two embeddings of
each photo, and how many photos keep their nearest neighbour. A configuration under 0.995 min cosine, or one
that loses a neighbour, is not recommended.

    python -m bench.fidelity                                  # every runtime x precision
    python -m bench.fidelity --configs torch:bfloat16,openvino:int8 --calibration DIR
    python -m bench.fidelity --configs torch:float16 --device cuda
    python -m bench.fidelity --model models/siglip2-base-patch16-224     # any family's folder
    python -m bench.fidelity --model siglip2-base-naflex-256             # a bench shape
    .venv-openclip/bin/python -m bench.fidelity --model open-clip-vit-b-32 --configs openvino:float32
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from app.embedding.fidelity import Fidelity, compare

RECOMMENDED_MIN_COSINE = 0.995
ALL_CONFIGS = "torch:bfloat16,torch:bfloat16+compile,openvino:float32,openvino:bfloat16,openvino:int8"


def recommended(fidelity: Fidelity) -> bool:
    return fidelity.min_cosine >= RECOMMENDED_MIN_COSINE and fidelity.neighbours_kept == fidelity.images


def settings_for(config: str, base: dict, calibration_dir: Path | None) -> dict:
    """'runtime:precision[+compile]' -> Settings fields."""
    runtime, _, precision = config.partition(":")
    precision, _, option = precision.partition("+")
    fields = dict(base, runtime=runtime, compile=option == "compile")
    if precision == "int8":
        return dict(fields, quantize="int8", calibration_dir=calibration_dir, dtype="float32")
    return dict(fields, dtype=precision)


def embed_all(settings_fields: dict, images) -> np.ndarray:
    from app.embedding.selection import load_backend
    from app.settings import Settings

    backend = load_backend(Settings(**settings_fields))
    backend.adopt_thread()
    return backend.embed(images, backend.default_pooling, normalize=True)[0]


def measure(configs: list[str], base: dict, calibration_dir: Path | None) -> list[dict]:
    from bench.photos import evaluation_photos

    images = evaluation_photos()
    reference = embed_all(dict(base, dtype="float32"), images)
    rows = []
    for config in configs:
        fidelity = compare(reference, embed_all(settings_for(config, base, calibration_dir), images))
        rows.append({"config": config, **fidelity.as_dict(), "recommended": recommended(fidelity)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| runtime:precision | min cosine vs torch float32 | mean cosine | nearest neighbour kept "
        "| recommended |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['config']} | {row['min_cosine']:.5f} | {row['mean_cosine']:.5f} "
            f"| {row['neighbours_kept']}/{row['images']} | {'yes' if row['recommended'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default=ALL_CONFIGS, help="runtime:precision[+compile], comma-separated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--calibration", type=Path, help="int8 calibration images (default: bench/photos.py's)"
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed")
    parser.add_argument(
        "--model",
        help="a model folder (python -m app.models fetch) or a bench shape (bench/models.py); "
        "default: MobileNetV2",
    )
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from app.embedding.default_model import ensure_default_model
    from bench.models import prepare_model
    from bench.photos import write_calibration_dir

    folder = prepare_model(args.model, args.cache) if args.model else ensure_default_model(args.cache)
    base = dict(
        model_id=str(folder),
        runtime="torch",  # the reference; each configuration names its own
        openvino_hint="throughput",
        model_dir="/nonexistent",
        device=args.device,
        max_batch_size=8,
        model_cache_dir=args.cache,
    )
    with tempfile.TemporaryDirectory() as scratch:
        calibration = args.calibration or write_calibration_dir(Path(scratch) / "calibration")
        rows = measure(args.configs.split(","), base, calibration)
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
