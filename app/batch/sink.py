"""The output folder of `python -m app.batch`: Parquet parts with the bulk client's schema
(id, source, embedding as a fixed-size float32 list; app/client.py's `embedding_table`),
readable as one table (`pyarrow.parquet.read_table(folder)`, `ray.data.read_parquet`).

Exactly once: each write task writes one part named after the run and its task index,
through a temporary name then a rename, so a task that Ray retries (its node went away)
replaces its own part instead of adding a second copy of its rows. Images that failed go
to parts of their own beside the folder (`<out>.failures/`), gathered into
`<out>.failures.jsonl` when the run ends. A later run skips every id already in the folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import BlockAccessor

from app.batch.decode import OK
from app.client import embedding_table

PART_GLOB = "part-*.parquet"


def failures_folder(out: Path) -> Path:
    return out.with_name(out.name + ".failures")


def failures_file(out: Path) -> Path:
    return out.with_name(out.name + ".failures.jsonl")


def done_ids(out: Path) -> set[str]:
    """Ids already written to `out` (the id column only: the embeddings stay on disk)."""
    done: set[str] = set()
    for part in sorted(out.glob(PART_GLOB)) if out.is_dir() else ():
        done.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
    return done


def gather_failures(out: Path) -> list[dict]:
    """This run's failures, from the failure parts into `<out>.failures.jsonl` (one JSON
    object a line: id, source, error); the parts are removed."""
    folder = failures_folder(out)
    rows: list[dict] = []
    for part in sorted(folder.glob(PART_GLOB)) if folder.is_dir() else ():
        rows.extend(pq.read_table(part).to_pylist())
        part.unlink()
    if folder.is_dir():
        folder.rmdir()
    temporary = failures_file(out).with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(row, ensure_ascii=True) + "\n" for row in rows))
    os.replace(temporary, failures_file(out))
    return rows


class EmbeddingSink(Datasink[tuple[int, int]]):
    def __init__(self, out: Path, run_id: str):
        self.out = out
        self.failures = failures_folder(out)
        self.run_id = run_id
        self.embedded = 0  # rows written, known on the driver once the write completes

    def on_write_start(self, schema=None) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.failures.mkdir(parents=True, exist_ok=True)
        for stale in self.failures.glob(PART_GLOB):  # from a run that was interrupted
            stale.unlink()

    def write(self, blocks, ctx) -> tuple[int, int]:
        """(rows written, rows failed) of this task's blocks."""
        columns: dict[str, list] = {"id": [], "source": [], "embedding": [], "error": []}
        for block in blocks:
            batch = BlockAccessor.for_block(block).to_numpy()
            for name, values in columns.items():
                values.extend(batch[name])
        errors = np.array(columns["error"], dtype=object)
        good = np.flatnonzero(errors == OK)
        bad = np.flatnonzero(errors != OK)
        name = f"part-{self.run_id}-{ctx.task_idx:06d}.parquet"
        if len(good):
            vectors = np.stack([columns["embedding"][i] for i in good]).astype(np.float32)
            ids = [str(columns["id"][i]) for i in good]
            sources = [str(columns["source"][i]) for i in good]
            _write_atomically(embedding_table(ids, sources, vectors), self.out / name)
        if len(bad):
            failed = pa.table(
                {
                    "id": [str(columns["id"][i]) for i in bad],
                    "source": [str(columns["source"][i]) for i in bad],
                    "error": [str(errors[i]) for i in bad],
                }
            )
            _write_atomically(failed, self.failures / name)
        return len(good), len(bad)

    def on_write_complete(self, write_result) -> None:
        self.embedded = sum(written for written, _ in write_result.write_returns)


def _write_atomically(table: pa.Table, path: Path) -> None:
    # A dot name: readers of the folder skip it until the rename makes the part whole.
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)
