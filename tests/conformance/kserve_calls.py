"""The kserve SDK's clients (REST and gRPC) against a running server, in a process of their
own (kserve and tritonclient.grpc cannot be imported into one process: both register the
same protobuf names). Prints one JSON object of what each call returned.

    python -m tests.conformance.kserve_calls rest URL MODEL IMAGE_FILE...
    python -m tests.conformance.kserve_calls grpc TARGET MODEL IMAGE_FILE... [--url IMAGE_URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import grpc
import httpx
import numpy as np
from kserve import InferenceRESTClient, RESTConfig
from kserve.inference_client import InferenceGRPCClient
from kserve.protocol.infer_type import InferInput, InferRequest

from tests.support import data_uri


async def rest_calls(url: str, model: str, files: list[bytes]) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    out: dict = {}
    try:
        out["live"] = await client.is_server_live(url)
        out["ready"] = await client.is_server_ready(url)
        out["model_ready"] = await client.is_model_ready(url, model)
        # JSON inputs (data URIs) ...
        image = InferInput("image", [len(files)], "BYTES")
        image.set_data_from_numpy(np.array([data_uri(f) for f in files], dtype=np.object_), binary_data=False)
        raw = InferInput("include_raw", [1], "BYTES")
        raw.set_data_from_numpy(np.array(["true"], dtype=np.object_), binary_data=False)
        response = await client.infer(
            url, InferRequest(model, [image, raw], request_id="k-1"), model_name=model
        )
        out["id"] = response.id
        out["raw_embeddings"] = {o.name: o for o in response.outputs}["raw_embeddings"].as_numpy().tolist()
        # ... and binary inputs (the files' own bytes).
        binary = InferInput("image", [len(files)], "BYTES")
        binary.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
        response = await client.infer(url, InferRequest(model, [binary]), model_name=model)
        document = response.outputs[0].as_numpy()[0]
        out["document"] = document.decode() if isinstance(document, bytes) else document
        try:
            bad = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["@@"]}]}
            await client.infer(url, bad, model_name=model)
            out["error"] = None
        except httpx.HTTPStatusError as exc:
            out["error"] = [exc.response.status_code, str(exc)]
    finally:
        await client.close()
    return out


async def grpc_calls(target: str, model: str, files: list[bytes], url: str | None) -> dict:
    client = InferenceGRPCClient(target, retries=0, timeout=60)
    out: dict = {}
    try:
        out["live"] = await client.is_server_live()
        out["ready"] = await client.is_server_ready()
        out["model_ready"] = await client.is_model_ready(model)
        # Typed contents (bytes_contents): the SDK sends a list's elements that way.
        image = InferInput("image", [len(files)], "BYTES", data=list(files))
        raw = InferInput("include_raw", [1], "BYTES", data=["true"])
        response = await client.infer(InferRequest(model, [image, raw], request_id="kg-1"))
        by_name = {o.name: o for o in response.outputs}
        out["id"] = response.id
        out["raw_embeddings"] = by_name["raw_embeddings"].as_numpy().tolist()
        document = by_name["output"].as_numpy()[0]
        out["document"] = document.decode() if isinstance(document, bytes) else document
        if url:
            by_url = InferInput("image", [1], "BYTES", data=[url])
            response = await client.infer(InferRequest(model, [by_url]))
            out["url_document"] = response.outputs[0].as_numpy()[0].decode()
        errors = {}
        for label, request in {
            "unknown_model": InferRequest("missing", [InferInput("image", [1], "BYTES", data=[files[0]])]),
            "bad_image": InferRequest(model, [InferInput("image", [1], "BYTES", data=[b"@@"])]),
        }.items():
            try:
                await client.infer(request)
                errors[label] = None
            except grpc.aio.AioRpcError as exc:
                errors[label] = [exc.code().name, exc.details()]
        out["errors"] = errors
    finally:
        await client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["rest", "grpc"])
    parser.add_argument("target")
    parser.add_argument("model")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--url")
    args = parser.parse_args()
    files = [path.read_bytes() for path in args.files]
    if args.transport == "rest":
        result = asyncio.run(rest_calls(args.target, args.model, files))
    else:
        result = asyncio.run(grpc_calls(args.target, args.model, files, args.url))
    print(json.dumps(result, default=lambda v: np.asarray(v).tolist()))


if __name__ == "__main__":
    main()
