from __future__ import annotations

import pytest

from tests.support import encode, photo, run_server, server_settings, static_server


@pytest.fixture(scope="session")
def photo_files(tmp_path_factory):
    """Real photos as JPEG files, served over HTTP by the static server."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee", "astronaut"):
        (folder / f"{name}.jpg").write_bytes(encode(photo(name), quality=90))
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="session")
def image_host(photo_files):
    with static_server(photo_files) as url:
        yield url


@pytest.fixture(scope="module")
def dinov2_server(tiny_models, tmp_path_factory):
    settings = server_settings(
        tiny_models["dinov2"],
        tmp_path_factory.mktemp("srv"),
        model_name="dinov2-large",
        model_id=str(tiny_models["dinov2"]),
        max_images_per_request=8,
    )
    with run_server(settings) as server:
        yield server
