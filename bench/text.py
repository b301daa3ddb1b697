"""Text embeddings per second: the server at N clients x 1 short text, beside the raw text
forward (the model's get_text_features on padded batches, in-process), in one run.

The model is a CLIP ViT-B/32-shaped full model with random weights (the text tower's cost
depends on its shape: 12 layers, width 512, 77 tokens; every text is padded to 77) and a
small byte-level BPE tokenizer (tests/tiny_models.py's):

    python -m bench.text --seconds 8 --clients 1,16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.load import run_load
from bench.models import VIT_BASE
from bench.reports import RESULTS, write_report
from bench.run import ROOT, app_command, free_port, process

TEXTS = ["a photo of a cat", "a red car at night", "two dogs on a beach", "a bowl of soup", "a city skyline"]


def prepare_model(cache: Path) -> Path:
    folder = cache / "clip-b32-text-random"
    if not (folder / "config.json").is_file():
        import torch
        import transformers as tf

        sys.path.insert(0, str(ROOT))
        from tests.tiny_models import _clip_tokenizer

        tokenizer = _clip_tokenizer(folder)
        torch.manual_seed(0)
        text = dict(
            vocab_size=len(tokenizer),
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        vision = dict(VIT_BASE, image_size=224, patch_size=32)
        tf.CLIPModel(
            tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)
        ).save_pretrained(folder)
        tf.CLIPImageProcessorPil(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
        ).save_pretrained(folder)
    return folder


def raw_text_forward(folder: Path, batches=(1, 8, 16, 32), seconds: float = 3.0) -> dict[int, float]:
    from app.embedding.backend import TEXT, PoolRequest
    from app.embedding.selection import load_backend
    from app.settings import Settings

    backend = load_backend(
        Settings(model_id=str(folder), model_dir="/nonexistent", device="cpu", max_batch_size=32)
    )
    backend.adopt_thread()
    rates = {}
    for batch in batches:
        tokens = backend.tokenize([TEXTS[i % len(TEXTS)] for i in range(batch)]).tokens
        request = [PoolRequest(batch, backend.default_pooling, False, TEXT)]
        backend.embed_batch(tokens, request)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            backend.embed_batch(tokens, request)
            done += batch
        rates[batch] = done / (time.perf_counter() - started)
    return rates


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    folder = prepare_model(args.cache)
    raw = raw_text_forward(folder)
    print(f"raw text forward (texts/s by batch): {raw}", flush=True)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), LOG_LEVEL="warning")
    server = app_command(
        folder, "clip", port, "--device", "cpu", "--max-batch-size", str(args.max_batch_size)
    )
    base = f"http://127.0.0.1:{port}"
    cells = []
    with process(server, f"{base}/v2/health/ready", env):
        for clients in map(int, args.clients.split(",")):
            bodies = [
                json.dumps(
                    {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]}
                ).encode()
                for t in TEXTS
            ]
            result = run_load(f"{base}/v2/models/clip/infer", bodies, 1, clients, args.seconds)
            cells.append(
                {
                    "clients": clients,
                    "texts_per_second": result.images_per_second,
                    "p50_ms": result.p50_ms,
                    "p95_ms": result.p95_ms,
                    "errors": result.errors,
                }
            )
    best = max(raw.values())
    print("| clients | texts/s | p50 ms | p95 ms | vs raw text forward (best batch) | errors |")
    print("|---|---|---|---|---|---|")
    for cell in cells:
        print(
            f"| {cell['clients']} | {cell['texts_per_second']:.1f} | {cell['p50_ms']:.0f} "
            f"| {cell['p95_ms']:.0f} "
            f"| {cell['texts_per_second'] / best:.2f}x | {cell['errors']} |"
        )
    report = {"raw_text_forward": raw, "cells": cells}
    write_report(report, RESULTS / "clip-b32-text.json")
    return report


if __name__ == "__main__":
    main()
