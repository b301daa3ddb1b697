"""Where the benchmarks keep their JSON: bench/results/ (ignored by git, so a fresh clone
has none: it is made on first use, not found missing after a long run)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(report: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
