"""NVIDIA Triton (through PyTriton) serving an OpenVINO export folder of this server's, for
bench/triton.py. Runs with the PyTriton venv's Python, not the server's: it imports only
pytriton, openvino, numpy and Pillow.

    python bench/triton_server.py EXPORT_FOLDER GRPC_PORT HTTP_PORT METRICS_PORT HINT INSTANCES DELAY_US

The model `bench` takes `image` (BYTES, a JPEG file, batch dimension first) and answers
`embedding` (FP32, the default pooling). Preprocessing is what a Triton user writes by hand
for these processors: Pillow's resize of the shortest edge, a centre crop, normalisation in
numpy (no transformers: its processors cost twice as much per image).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import openvino as ov
from PIL import Image
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def preprocessor(folder: Path):
    config = json.loads((folder / "preprocessor_config.json").read_text())
    size = config.get("size", {})
    shortest = size.get("shortest_edge") or min(size.get("height", 224), size.get("width", 224))
    crop = config.get("crop_size") or {"height": shortest, "width": shortest}
    crop_h, crop_w = crop["height"], crop["width"]
    resample = Image.Resampling(config.get("resample", 2))
    scale = config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0
    mean = np.asarray(config.get("image_mean", [0.0, 0.0, 0.0]), np.float32).reshape(3, 1, 1)
    std = np.asarray(config.get("image_std", [1.0, 1.0, 1.0]), np.float32).reshape(3, 1, 1)

    def preprocess(data: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        ratio = shortest / min(image.width, image.height)
        width, height = round(image.width * ratio), round(image.height * ratio)
        image = image.resize((width, height), resample)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) * scale
        return (pixels - mean) / std

    return preprocess


def main() -> None:
    folder, grpc_port, http_port, metrics_port, hint, instances, delay_us = sys.argv[1:8]
    folder = Path(folder)
    info = json.loads((folder / "embedding_export.json").read_text())
    output = info["default_pooling"]
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(folder / "model.xml"),
        "CPU",
        {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": "f32"},
    )
    preprocess = preprocessor(folder)

    def make_infer():
        request = compiled.create_infer_request()

        @batch
        def infer(image: np.ndarray):
            pixels = np.stack([preprocess(bytes(row[0])) for row in image])
            embeddings = request.infer({0: pixels})[output]
            return {"embedding": np.ascontiguousarray(embeddings, dtype=np.float32)}

        return infer

    config = TritonConfig(grpc_port=int(grpc_port), http_port=int(http_port), metrics_port=int(metrics_port))
    with Triton(config=config) as triton:
        triton.bind(
            model_name="bench",
            infer_func=[make_infer() for _ in range(int(instances))],
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="embedding", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=32, batcher=DynamicBatcher(max_queue_delay_microseconds=int(delay_us))
            ),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
