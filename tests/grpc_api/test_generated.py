"""The committed gRPC modules are what scripts/generate_grpc.py makes from the proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_match_the_proto(tmp_path):
    spec = importlib.util.spec_from_file_location("generate_grpc", ROOT / "scripts" / "generate_grpc.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    written = script.generate(tmp_path)
    assert [p.name for p in written] == list(script.GENERATED)
    for path in written:
        committed = ROOT / script.PROTO.parent / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run scripts/generate_grpc.py"
        )


def test_server_messages_share_a_process_with_tritonclient_and_kserve():
    # Both clients register the same inference.* names in protobuf's default pool; the
    # server's modules use a pool of their own, so either client can be imported beside them.
    import tritonclient.grpc.service_pb2 as triton_pb

    from app.grpc_api.v2 import grpc_service_pb2 as ours

    request = ours.ModelInferRequest(model_name="m", raw_input_contents=[b"x"])
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    theirs = triton_pb.ModelInferRequest.FromString(request.SerializeToString())
    assert (theirs.model_name, theirs.inputs[0].name, theirs.raw_input_contents[0]) == ("m", "image", b"x")
