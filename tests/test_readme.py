"""README.md stays true: its settings table is the code's, its test command is CI's."""

from __future__ import annotations

from pathlib import Path

from app.settings import settings_markdown_table

ROOT = Path(__file__).resolve().parents[1]


def test_settings_table_matches_the_code():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- settings:start -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert table == settings_markdown_table()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = [
        line for line in readme.splitlines() if line.startswith("python3 -m venv") and "scripts/check" in line
    ]
    assert len(command) == 1
    assert command[0] in (ROOT / ".ci" / "run").read_text()


def test_the_quick_start_request_runs_as_written(default_model_cache, tmp_path):
    """The README's first request, with curl and jq, against the default model."""
    import json
    import shutil
    import subprocess

    import pytest

    from tests.support import app_process

    if shutil.which("curl") is None or shutil.which("jq") is None:
        pytest.fail("curl and jq are needed (.ci/run installs them)")
    readme = (ROOT / "README.md").read_text()
    [command] = [
        line for line in readme.splitlines() if line.startswith("curl -s http://127.0.0.1:8080/v2/models/")
    ]
    with app_process(None, tmp_path, "--model-cache-dir", str(default_model_cache)) as server:
        result = subprocess.run(
            ["bash", "-c", command.replace("http://127.0.0.1:8080", server.url)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model_id"] == "torchvision/mobilenet_v2-imagenet" and answer["shape"] == [1, 1280]
    assert len(answer["first"]) == 3
