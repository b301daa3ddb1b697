"""One family's forward speed in each runtime x precision against torch eager float32,
measured in one run (img/s at each runtime's best batch; the model's own forward, no
decoding, no server).

    python -m bench.family_speed --model siglip2-base-224
    python -m bench.family_speed --model siglip2-base-naflex-256
    python -m bench.family_speed --model dinov2-small --configs openvino:float32

int8 of a random-weight shape is quantized with its fidelity gate opened (its embeddings
mean nothing; its speed is the shape's).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
from pathlib import Path

from bench.forward import configured, eager_fp32
from bench.models import prepare_model

BATCHES = (1, 8, 16, 32)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="siglip2-base-224")
    parser.add_argument("--configs", default="openvino:float32,openvino:int8")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per batch size")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from app.embedding.selection import load_backend
    from app.settings import Settings
    from bench.photos import write_calibration_dir

    folder = prepare_model(args.model, args.cache)
    rates = {"torch:eager-float32": eager_fp32(folder, BATCHES, args.seconds)}
    with tempfile.TemporaryDirectory() as scratch:
        calibration = write_calibration_dir(Path(scratch) / "calibration", count=32)
        for config in args.configs.split(","):
            runtime, _, precision = config.partition(":")
            fields = dict(
                model_id=str(folder),
                model_dir="/nonexistent",
                runtime=runtime,
                openvino_hint="throughput",
                model_cache_dir=args.cache,
                max_batch_size=max(BATCHES),
            )
            if precision == "int8":
                fields |= dict(
                    quantize="int8",
                    calibration_dir=calibration,
                    quantize_max_cosine_drop=0.999,
                    quantize_min_neighbours_kept=0,
                )
            else:
                fields["dtype"] = precision
            backend = load_backend(Settings(**fields))
            rates[config] = configured(backend, BATCHES, args.seconds)
            del backend
            gc.collect()
    eager = max(rates["torch:eager-float32"].values())
    report = {
        "model": args.model,
        "best_img_per_s": {name: max(r.values()) for name, r in rates.items()},
        "vs_eager": {name: max(r.values()) / eager for name, r in rates.items()},
        "by_batch": rates,
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
