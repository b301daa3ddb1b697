"""The embedded default model over HTTP: real MobileNetV2 weights give meaningful embeddings."""

from __future__ import annotations

import httpx
import numpy as np

from tests.support import data_uri, embeddings_of, encode, image_request, photo, run_server, server_settings


def test_two_crops_of_a_photo_embed_closer_than_another_photo(default_model_cache, tmp_path):
    settings = server_settings(None, tmp_path, model_cache_dir=default_model_cache)
    cat = photo("chelsea")  # 451 x 300
    crops = [cat.crop((0, 0, 380, 300)), cat.crop((70, 0, 451, 290))]
    images = [data_uri(encode(i)) for i in (*crops, photo("coffee"))]
    with run_server(settings) as server:
        assert server.model == "mobilenet-v2"
        response = httpx.post(server.infer_url(), json=image_request(images, normalize="true"), timeout=120)
        assert response.status_code == 200, response.text
    first, second, coffee = embeddings_of(response)
    assert first @ second > first @ coffee + 0.1
    assert first @ second > second @ coffee + 0.1
    np.testing.assert_allclose([np.linalg.norm(first)], [1], rtol=1e-5)
