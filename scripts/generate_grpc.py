"""Regenerate the gRPC modules beside app/grpc_api/v2/grpc_service.proto.

    python scripts/generate_grpc.py            # rewrite the committed modules
    python scripts/generate_grpc.py --out DIR  # write them under DIR instead (the test does)

Needs grpcio-tools (requirements-dev.txt pins the version the committed files came from).
One edit after protoc: the messages go into a descriptor pool of their own instead of
protobuf's default one. tritonclient.grpc and the kserve SDK each register the same
`inference.*` names in the default pool, and a second registration fails the import; with
a pool of its own the server shares a process with either client (the tests do, and so
may an application that embeds the server). The wire format does not depend on the pool.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("app/grpc_api/v2/grpc_service.proto")
GENERATED = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules into out_dir; return their paths."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as scratch:
        # Paths relative to the repository root, so the modules import each other as
        # `app.grpc_api.v2.grpc_service_pb2`.
        args = [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            str(ROOT / PROTO),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            source = Path(scratch) / PROTO.parent / name
            target = out_dir / name
            if name == "grpc_service_pb2.py":
                text = source.read_text()
                if DEFAULT_POOL not in text:
                    raise RuntimeError("protoc's output changed: no default-pool registration to replace")
                target.write_text(text.replace(DEFAULT_POOL, OWN_POOL))
            else:
                shutil.copyfile(source, target)
            written.append(target)
        return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / PROTO.parent)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
