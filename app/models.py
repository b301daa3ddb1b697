"""`python -m app.models`: prepare a model folder that serves without the HuggingFace hub.

    python -m app.models fetch facebook/dinov2-small --out /models/dinov2-small
    python -m app.models fetch ./my-save-pretrained-folder --out /models/mine
    python -m app.models default --out /models/mobilenet-v2

`fetch` (on a machine that reaches the hub, or from the local HuggingFace cache, or from a
folder written by `save_pretrained`) copies what serving needs (config, weights as
safetensors where the repository has them, image processor, tokenizer files) into one
folder and checks that it loads. `default` writes the embedded MobileNetV2 as a folder.
Copy the folder to the server and set MODEL_ID to it, mount it at MODEL_DIR (a KServe
storageUri lands there), or put it in a MODEL_REPOSITORY."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# What serving reads; the other frameworks' weights (TensorFlow, Flax, ONNX) are skipped.
SERVING_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
PICKLE_WEIGHTS = ["*.bin"]  # only for a repository without safetensors weights


def fetch(model_id: str, out: Path) -> Path:
    """The model's serving files in `out` (which must not exist or be empty)."""
    source = Path(model_id).expanduser()
    if not source.is_dir():
        from huggingface_hub import list_repo_files, snapshot_download

        patterns = list(SERVING_PATTERNS)
        try:
            names = list_repo_files(model_id)
        except Exception:  # noqa: BLE001 - offline: take what the cache has, safetensors first
            names = None
        if names is not None and not any(name.endswith(".safetensors") for name in names):
            patterns += PICKLE_WEIGHTS
        # Into the HuggingFace cache (or found there, offline), then copied as plain files.
        source = Path(snapshot_download(model_id, allow_patterns=patterns))
    files = [p for pattern in SERVING_PATTERNS for p in source.glob(pattern)]
    if not any(p.suffix == ".safetensors" for p in files):
        files += [p for pattern in PICKLE_WEIGHTS for p in source.glob(pattern)]
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o755)
    for path in files:
        shutil.copyfile(path, out / path.name)  # follows the cache's links; plain 0644 files
    return out


def check_loads(folder: Path) -> str:
    """A one-line description of the model in `folder`, once it has loaded (raises if not)."""
    import torch

    from app.embedding.loader import load_model
    from app.embedding.model_source import ModelSource

    loaded = load_model(
        ModelSource(str(folder), folder.name, str(folder)), torch.device("cpu"), torch.float32
    )
    towers = "image and text" if loaded.text is not None else "image"
    return f"{loaded.config.model_type} ({towers})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.models", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="a hub id, or a save_pretrained folder, into --out")
    fetch_parser.add_argument("model_id")
    fetch_parser.add_argument("--out", type=Path, required=True)
    default_parser = commands.add_parser("default", help="the embedded MobileNetV2 as a folder in --out")
    default_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty")
    if args.command == "fetch":
        try:
            fetch(args.model_id, args.out)
        except Exception as exc:  # noqa: BLE001 - one line for the hub's many errors
            print(
                f"error: cannot fetch {args.model_id}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                file=sys.stderr,
            )
            return 1
    else:
        import tempfile

        from app.embedding.default_model import ensure_default_model

        with tempfile.TemporaryDirectory(dir=args.out.parent if args.out.parent.exists() else None) as build:
            fetch(str(ensure_default_model(Path(build))), args.out)
    try:
        described = check_loads(args.out)
    except Exception as exc:  # noqa: BLE001
        print(
            f"error: {args.out} does not load: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            file=sys.stderr,
        )
        return 1
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {described}, {size / 2**20:.1f} MiB")
    print(
        f"serve it with: MODEL_ID={args.out} python -m app  "
        "(or mount it at MODEL_DIR, or put it in a MODEL_REPOSITORY)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
