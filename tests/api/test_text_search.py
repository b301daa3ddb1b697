"""Text-to-image search over HTTP: the V2 `text` input, the OpenAI-style embeddings route
(driven by the official `openai` client), mixed image and text traffic, and the manual's
"Search images with text" example run as written."""

from __future__ import annotations

import base64
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import transformers as tf
import tritonclient.http as triton

from tests.embedding.test_text import reference_text_features
from tests.support import data_uri, embeddings_of, encode, image_request, photo, run_server, server_settings

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ("chelsea", "coffee", "rocket")


def text_request(texts: list[str], **flags) -> dict:
    inputs = [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    for name, value in flags.items():
        inputs.append({"name": name, "shape": [1], "datatype": "BYTES", "data": [value]})
    return {"inputs": inputs}


@pytest.fixture(scope="module", params=["clip", "siglip"])
def server(request, text_models, tmp_path_factory):
    settings = server_settings(
        text_models[request.param],
        tmp_path_factory.mktemp("text"),
        model_name="search",
        max_batch_size=8,
        max_texts_per_request=8,
        max_text_chars=300,
    )
    with run_server(settings) as running:
        running.family = request.param
        running.folder = text_models[request.param]
        yield running


@pytest.fixture(scope="module")
def photo_uris():
    return [data_uri(encode(photo(name))) for name in PHOTOS]


def test_text_input_gives_the_models_text_features(server):
    texts = ["a photo of a cat", "coins", "a photo of the cat " * 15]
    response = httpx.post(server.infer_url(), json=text_request(texts, include_raw="true"), timeout=60)
    assert response.status_code == 200, response.text
    rows = embeddings_of(response)
    max_length = {"clip": 77, "siglip": 64}[server.family]
    expected = reference_text_features(server.folder, server.family, texts, max_length).numpy()
    np.testing.assert_allclose(rows, expected, rtol=1.3e-6, atol=1e-5)
    length = int(response.headers["inference-header-content-length"])
    header = httpx.Response(200, content=response.content[:length]).json()
    assert header["parameters"] == {"texts_truncated": 1}
    raw = np.frombuffer(response.content[length:][-rows.nbytes :], dtype="<f4").reshape(rows.shape)
    np.testing.assert_array_equal(raw, rows)


def test_metadata_lists_the_text_input_and_modalities(server):
    metadata = httpx.get(f"{server.url}/v2/models/search", timeout=30).json()
    assert {"name": "text", "datatype": "BYTES", "shape": [-1]} in metadata["inputs"]
    assert metadata["parameters"]["modalities"] == ["image", "text"]
    assert metadata["parameters"]["max_texts_per_request"] == 8
    # What turns cosines into the model's logits: CLIP's scale, SigLIP's scale and bias.
    model = tf.AutoModel.from_pretrained(server.folder)
    logits = {"logit_scale": pytest.approx(float(model.logit_scale.exp()))}
    if server.family == "siglip":
        logits["logit_bias"] = pytest.approx(float(model.logit_bias))
    assert {k: v for k, v in metadata["parameters"].items() if k.startswith("logit_")} == logits


def test_tritonclient_sends_text_as_bytes(server):
    client = triton.InferenceServerClient(server.host_port)
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"a photo of a cat", "東京".encode()], dtype=object), binary_data=True)
    result = client.infer(
        "search", [text], outputs=[triton.InferRequestedOutput("raw_embeddings", binary_data=True)]
    )
    rows = result.as_numpy("raw_embeddings")
    max_length = {"clip": 77, "siglip": 64}[server.family]
    expected = reference_text_features(server.folder, server.family, ["a photo of a cat", "東京"], max_length)
    np.testing.assert_allclose(rows, expected.numpy(), rtol=1.3e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {
                "inputs": [
                    {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]},
                    {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]},
                ]
            },
            400,
            "carries input 'image' or input 'text', not both",
        ),
        (
            {"inputs": [{"name": "normalize", "shape": [1], "datatype": "BYTES", "data": ["true"]}]},
            400,
            "missing input 'image' (BYTES: URLs, data URIs, base64 or image files) or 'text'",
        ),
        (
            text_request(["a"] * 9),
            413,
            "input 'text' has 9 texts, over the limit of 8 per request (MAX_TEXTS_PER_REQUEST)",
        ),
        (
            text_request(["ok", "x" * 301]),
            400,
            "input 'text' element 1 has 301 characters, over the limit of 300",
        ),
        (text_request(["a cat"], pooling_strategy="max"), 400, "'max' applies to images"),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "INT32", "data": [1]}]},
            400,
            "input 'text' must have datatype BYTES",
        ),
        (
            {"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]},
            400,
            "has no elements",
        ),
    ],
)
def test_bad_text_requests_are_named(server, body, status, message):
    response = httpx.post(server.infer_url(), json=body, timeout=30)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert httpx.post(server.infer_url(), json=text_request(["still serving"]), timeout=30).status_code == 200


def test_text_that_is_not_utf8_is_refused(server):
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"\xff\xfe not utf-8"], dtype=object), binary_data=True)
    with pytest.raises(triton.InferenceServerException, match="element 0 is not UTF-8 text"):
        triton.InferenceServerClient(server.host_port).infer("search", [text])


def test_mixed_image_and_text_traffic_answers_each_request_its_own_rows(server, photo_uris):
    """16 clients at once, half images, half texts: each gets what it gets alone."""
    plans = []
    for i in range(16):
        if i % 2:
            plans.append(text_request([f"a photo of a {w}" for w in ("cat", "dog", "rocket")[: 1 + i % 3]]))
        else:
            plans.append(image_request(photo_uris[: 1 + i % 3], normalize="true"))
    alone = [embeddings_of(httpx.post(server.infer_url(), json=p, timeout=60)) for p in plans]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda p: httpx.post(server.infer_url(), json=p, timeout=60), plans))
    for response, expected in zip(together, alone, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(embeddings_of(response), expected, atol=1e-5)


# --- the OpenAI-style route -----------------------------------------------------------------


def openai_client(server, prefix="/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}{prefix}", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("prefix", ["/v1", "/openai/v1"])
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_openai_client_gets_the_text_embeddings(server, prefix, encoding_format):
    texts = ["a photo of a cat", "coins"]
    result = openai_client(server, prefix).embeddings.create(
        model="search", input=texts, encoding_format=encoding_format
    )
    assert result.object == "list" and result.model == "search"
    assert [d.index for d in result.data] == [0, 1]
    rows = np.array(
        [
            d.embedding if encoding_format == "float" else np.frombuffer(base64.b64decode(d.embedding), "<f4")
            for d in result.data
        ],
        dtype=np.float32,
    )
    max_length = {"clip": 77, "siglip": 64}[server.family]
    expected = reference_text_features(server.folder, server.family, texts, max_length).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)  # OpenAI's embeddings are unit-length
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0


def test_openai_route_embeds_images_in_the_same_space(server, photo_uris):
    client = openai_client(server)
    result = client.embeddings.create(model="search", input=photo_uris[:2], extra_body={"modality": "image"})
    rows = np.array([d.embedding for d in result.data], dtype=np.float32)
    v2 = embeddings_of(
        httpx.post(server.infer_url(), json=image_request(photo_uris[:2], normalize="true"), timeout=60)
    )
    np.testing.assert_allclose(rows, v2, atol=1e-6)
    assert result.usage.prompt_tokens == 0


@pytest.mark.parametrize(
    ("kwargs", "status", "param", "message"),
    [
        (dict(model="nope", input="a"), 404, None, "unknown model 'nope'"),
        (dict(model="search", input="a", dimensions=3), 400, "dimensions", "cannot shorten them"),
        (dict(model="search", input=[]), 400, "input", "input is empty"),
        (dict(model="search", input=["a"] * 9), 413, None, "over the limit of 8 texts"),
        (dict(model="search", input=[[1, 2, 3]]), 400, "input", "token arrays are not supported"),
        (dict(model="search", input="a", encoding_format="int8"), 400, "encoding_format", "invalid request"),
    ],
)
def test_openai_errors_come_in_openais_shape(server, kwargs, status, param, message):
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client(server).embeddings.create(**({"encoding_format": "float"} | kwargs))
    error = caught.value
    assert error.status_code == status
    body = error.response.json()["error"]
    assert message in body["message"] and body["param"] == param and body["type"]
    # Only this route answers in OpenAI's shape: V2 keeps {"error": "..."}.
    v2 = httpx.post(f"{server.url}/v2/models/nope/infer", json=text_request(["a"]), timeout=30)
    assert isinstance(v2.json()["error"], str)


def test_openai_route_with_dimensions_equal_to_the_model_is_served(server):
    size = httpx.get(f"{server.url}/v2/models/search", timeout=30).json()["parameters"]["embedding_dim"]
    result = openai_client(server).embeddings.create(model="search", input="a cat", dimensions=size)
    assert len(result.data[0].embedding) == size


# --- the manual's example (docs/models.md), run as written --------------------------------------


def test_readme_search_example_runs_on_a_tiny_clip(text_models, tmp_path, monkeypatch):
    readme = (ROOT / "docs" / "models.md").read_text()
    section = readme.split("## Search images with text", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for name in PHOTOS:
        photo(name).save(tmp_path / f"{name}.jpg")
    settings = server_settings(text_models["clip"], tmp_path, model_name="clip")
    with run_server(settings) as running:
        monkeypatch.chdir(tmp_path)
        code = code.replace("http://127.0.0.1:8080", running.url)
        namespace: dict = {}
        exec(compile(code, "docs/models.md", "exec"), namespace)  # noqa: S102 - the documented example
    ranking = namespace["ranking"]
    assert sorted(name for name, _ in ranking) == sorted(f"{n}.jpg" for n in PHOTOS)
    scores = [score for _, score in ranking]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
