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
        line for line in readme.splitlines() if "pytest" in line and line.startswith("python3 -m venv")
    ]
    assert len(command) == 1
    assert command[0] in (ROOT / ".ci" / "run").read_text()
