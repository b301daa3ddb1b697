"""README.md and docs/ stay true: the settings tables are the code's, the test command is
CI's, the examples run as written, every link resolves, and the README stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import settings_markdown_table

ROOT = Path(__file__).resolve().parents[1]


def test_settings_table_matches_the_code():
    readme = (ROOT / "docs" / "settings.md").read_text()
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
    # As written: the default settings, RUNTIME=auto included.
    defaults = ("--runtime", "auto", "--openvino-hint", "auto")
    with app_process(None, tmp_path, "--model-cache-dir", str(default_model_cache), *defaults) as server:
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


def test_the_openai_example_runs_as_written(default_model_cache, tmp_path, monkeypatch):
    from tests.support import app_process

    readme = (ROOT / "README.md").read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "OpenAI(" in block]
    # As written: the default settings, RUNTIME=auto included.
    defaults = ("--runtime", "auto", "--openvino-hint", "auto")
    with app_process(None, tmp_path, "--model-cache-dir", str(default_model_cache), *defaults) as server:
        monkeypatch.chdir(ROOT)
        namespace: dict = {}
        exec(compile(code.replace("http://127.0.0.1:8080", server.url), "README.md", "exec"), namespace)  # noqa: S102
    embedding = namespace["result"].data[0].embedding
    assert len(embedding) == 1280 and abs(sum(v * v for v in embedding) - 1) < 1e-4


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) >= 9
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in (
        "models",
        "protocol",
        "several-models",
        "runtimes",
        "benchmarks",
        "security",
        "operations",
        "settings",
        "development",
    ):
        assert f"(docs/{page}.md)" in readme, page
