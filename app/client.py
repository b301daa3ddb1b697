"""`python -m app.client`: embed many images through one or more running servers.

    python -m app.client photos/ --server http://127.0.0.1:8080 --out photos.parquet
    python -m app.client urls.txt --server http://a:8080 --server http://b:8080 --out urls.npy
    python -m app.client table.csv --column path --out table.parquet --pooling mean --normalize

Sources: a folder (every image file below it), a text file of URLs or paths (one a line),
or a column of a CSV or Parquet file. Each request is a binary V2 request of --batch images
(files as their bytes, URLs as text for the server to fetch); --concurrency requests are in
flight, spread over the servers. 503 and 429 are retried after their Retry-After (capped by
--max-retry-after), 504, other 5xx, malformed answers and connection failures with
exponential backoff; each of the three kinds (refused connections, busy or loading servers,
server errors) has its own --retries budget, so a server that restarts (refused, then
loading) does not spend one budget twice. An image the server refuses (400 naming the
element) or answers with a NaN or infinite embedding is listed in `<out>.failures.jsonl`
with its message, and the rest of its batch goes on. Results are written in parts as they
arrive (`<out>.parts/`), so Ctrl-C or a crash leaves everything finished so far; the output
file (Parquet: id, source, embedding; or .npy with `<out>.ids.jsonl`, one JSON object a
line, whatever characters the names hold) is assembled from them at the end, and a second
run skips every id already written. Files with identical bytes (one photo under two names)
are sent once per run: every name gets its row. Light on purpose: httpx, numpy, tqdm, pyarrow; no torch.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import itertools
import json
import os
import random
import struct
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from app.installed import is_installed

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
FLUSH_ROWS = 1024  # rows per part file
# Embeddings kept for files seen earlier in the run, to answer later files with the same
# bytes; past it the oldest are forgotten (a twin that late is sent, the server's cache answers).
KNOWN_CONTENT_BYTES = 64 * 1024 * 1024


def is_url(source: str) -> bool:
    """An http(s) URL, which the server (or app.batch's fetcher) fetches; else a file path."""
    return source.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class Item:
    id: str  # what the output is keyed by: the source as given (folder: the relative path)
    source: str  # an http(s) URL or a file path


# --- sources ---------------------------------------------------------------------------------


def read_items(source: Path, column: str | None = None) -> list[Item]:
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [Item(str(p.relative_to(source)), str(p)) for p in files]
    suffix = source.suffix.lower()
    if suffix == ".csv":
        with source.open(newline="") as handle:
            reader = csv.DictReader(handle)
            name = column or (reader.fieldnames or [""])[0]
            values = [row[name] for row in reader]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(source, columns=[column] if column else None)
        values = [str(v) for v in table.column(column or table.column_names[0]).to_pylist()]
    else:
        values = [line.strip() for line in source.read_text().splitlines()]
        values = [v for v in values if v and not v.startswith("#")]
    items, seen = [], set()
    for value in values:
        if value in seen:
            continue
        seen.add(value)
        path = value if is_url(value) or Path(value).is_absolute() else str(source.parent / value)
        items.append(Item(value, path))
    return items


# --- output ----------------------------------------------------------------------------------


class Output:
    """Parts written as results arrive (each atomically), assembled into the output at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        self.ids_path = path.with_suffix(".ids.jsonl")
        self.legacy_ids_path = path.with_suffix(".ids.txt")  # tab-separated, written before .jsonl
        self.failures_path = path.with_name(path.name + ".failures.jsonl")
        # Part names unique across runs: a resumed run adds parts beside an earlier run's.
        self._names = (f"part-{time.time_ns()}-{n:06d}.parquet" for n in itertools.count())

    def _tables(self):
        import pyarrow.parquet as pq

        if self.path.exists():
            yield self._read_final()
        for part in sorted(self.parts.glob("part-*.parquet")) if self.parts.exists() else ():
            yield pq.read_table(part)

    def _read_final(self):
        import pyarrow.parquet as pq

        if self.path.suffix == ".npy":
            rows = self._id_rows()
            return embedding_table([r[0] for r in rows], [r[1] for r in rows], np.load(self.path))
        return pq.read_table(self.path)

    def _id_rows(self) -> list[tuple[str, str]]:
        """(id, source) of each .npy row. JSON lines, split on \\n alone: names may hold any
        character, and str.splitlines would also split on \\x1c, \\x85 or \\u2028."""
        if not self.ids_path.exists() and self.legacy_ids_path.exists():
            lines = self.legacy_ids_path.read_text().split("\n")
            return [tuple(line.split("\t", 1)) for line in lines if line]  # type: ignore[misc]
        rows = [json.loads(line) for line in self.ids_path.read_text().split("\n") if line]
        return [(row["id"], row["source"]) for row in rows]

    def done_ids(self) -> set[str]:
        """Ids already written: the id column only (a million embeddings stay on disk)."""
        import pyarrow.parquet as pq

        done: set[str] = set()
        if self.path.exists():
            if self.path.suffix == ".npy":
                done.update(row[0] for row in self._id_rows())
            else:
                done.update(pq.read_table(self.path, columns=["id"]).column("id").to_pylist())
        for part in sorted(self.parts.glob("part-*.parquet")) if self.parts.exists() else ():
            done.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
        return done

    def write_part(self, rows: list[tuple[str, str, np.ndarray]]) -> None:
        import pyarrow.parquet as pq

        if not rows:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        ids, sources, vectors = zip(*rows, strict=True)
        final = self.parts / next(self._names)
        temporary = final.with_suffix(".tmp")
        pq.write_table(embedding_table(list(ids), list(sources), np.stack(vectors)), temporary)
        os.replace(temporary, final)  # a part is whole or absent

    def assemble(self) -> int:
        """Write the output from everything finished (earlier runs included); the rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = list(self._tables())
        if not tables:
            return 0
        table = pa.concat_tables(tables)
        temporary = self.path.with_name(self.path.name + ".tmp")
        if self.path.suffix == ".npy":
            vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
            with open(temporary, "wb") as handle:
                np.save(handle, vectors)
            # ensure_ascii: every control or line-separator character in a name is escaped.
            pairs = zip(table.column("id").to_pylist(), table.column("source").to_pylist(), strict=True)
            ids = [json.dumps({"id": i, "source": s}, ensure_ascii=True) for i, s in pairs]
            ids_temporary = self.ids_path.with_suffix(".tmp")
            ids_temporary.write_text("\n".join(ids) + "\n")
            os.replace(ids_temporary, self.ids_path)
            self.legacy_ids_path.unlink(missing_ok=True)
        else:
            pq.write_table(table, temporary)
        os.replace(temporary, self.path)
        for part in self.parts.glob("part-*.parquet"):
            part.unlink()
        if self.parts.exists():
            self.parts.rmdir()
        return table.num_rows


def embedding_table(ids: list[str], sources: list[str], vectors: np.ndarray):
    """The output schema: id, source, embedding (a fixed-size list of float32)."""
    import pyarrow as pa

    vectors = np.asarray(vectors, dtype=np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    return pa.table({"id": ids, "source": sources, "embedding": embedding})


# --- requests --------------------------------------------------------------------------------


def encode_request(elements: list[bytes], pooling: str | None, normalize: bool | None) -> tuple[bytes, int]:
    """A binary V2 request: the image elements as BYTES tensor data, raw embeddings back."""
    chunk = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    inputs = [
        {
            "name": "image",
            "shape": [len(elements)],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": len(chunk)},
        }
    ]
    if pooling:
        inputs.append({"name": "pooling_strategy", "shape": [1], "datatype": "BYTES", "data": [pooling]})
    if normalize is not None:
        inputs.append(
            {"name": "normalize", "shape": [1], "datatype": "BYTES", "data": [str(normalize).lower()]}
        )
    header = json.dumps(
        {"inputs": inputs, "outputs": [{"name": "raw_embeddings", "parameters": {"binary_data": True}}]}
    ).encode()
    return header + chunk, len(header)


def decode_embeddings(response: httpx.Response, rows: int) -> np.ndarray:
    """The [rows, D] raw embeddings of a 200 answer; MalformedAnswer when it is not one."""
    try:
        length = int(response.headers["inference-header-content-length"])
        header = json.loads(response.content[:length])
        [output] = [o for o in header["outputs"] if o["name"] == "raw_embeddings"]
        answered, dim = (int(n) for n in output["shape"])
    except (KeyError, ValueError, TypeError) as exc:
        raise MalformedAnswer(
            f"200 answer without a readable raw_embeddings output ({type(exc).__name__})"
        ) from None
    if answered != rows or dim <= 0 or len(response.content) - length != rows * dim * 4:
        raise MalformedAnswer(
            f"200 answer of shape [{answered}, {dim}] with {len(response.content) - length} bytes "
            f"for {rows} images"
        )
    return np.frombuffer(response.content, dtype="<f4", count=rows * dim, offset=length).reshape(rows, dim)


# The kinds of retryable failure, each with its own budget of --retries.
CONNECTION, BUSY, SERVER_ERROR = "connection", "busy", "server error"


class RetryableError(Exception):
    def __init__(self, message: str, kind: str, wait_s: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.wait_s = wait_s


class MalformedAnswer(RetryableError):
    def __init__(self, message: str):
        super().__init__(message, SERVER_ERROR)


@dataclass
class Settings:
    servers: list[str]
    model: str
    batch: int = 16
    concurrency: int = 4
    retries: int = 8
    backoff_s: float = 0.5
    timeout_s: float = 300.0
    max_retry_after_s: float = 60.0
    pooling: str | None = None
    normalize: bool | None = None


class BulkEmbedder:
    def __init__(self, settings: Settings, output: Output, progress=None):
        self.settings = settings
        self.output = output
        self.progress = progress
        self.pending: list[tuple[str, str, np.ndarray]] = []  # finished, not yet in a part
        self.failures: list[dict] = []
        self.embedded = 0
        self.dim: int | None = None  # the first answer's; an answer of another size fails its batch
        self._servers = itertools.cycle(settings.servers)
        # sha256 of a file's bytes -> its embedding, or why it failed (a future while in flight).
        self._contents: OrderedDict[bytes, asyncio.Future] = OrderedDict()
        self._content_bytes = 0

    async def run(self, items: list[Item]) -> None:
        batches: asyncio.Queue[list[Item]] = asyncio.Queue()
        for start in range(0, len(items), self.settings.batch):
            batches.put_nowait(items[start : start + self.settings.batch])
        limits = httpx.Limits(max_connections=self.settings.concurrency * len(self.settings.servers))
        async with httpx.AsyncClient(
            timeout=self.settings.timeout_s, limits=limits, trust_env=False
        ) as client:
            workers = [
                asyncio.create_task(self._work(client, batches)) for _ in range(self.settings.concurrency)
            ]
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
        self.flush()

    async def _work(self, client: httpx.AsyncClient, batches: asyncio.Queue) -> None:
        while not batches.empty():
            batch = batches.get_nowait()
            await self._embed(client, batch)
            if self.progress is not None:
                self.progress.update(len(batch))
            if len(self.pending) >= FLUSH_ROWS:
                self.flush()

    def flush(self) -> None:
        rows, self.pending = self.pending, []
        self.output.write_part(rows)

    def _fail(self, item: Item, message: str) -> None:
        self.failures.append({"id": item.id, "source": item.source, "error": message})

    async def _embed(self, client: httpx.AsyncClient, batch: list[Item]) -> None:
        elements: list[bytes] = []
        live: list[Item] = []
        owned: dict[str, asyncio.Future] = {}  # item id -> the future of its bytes, for its twins
        twins: list[tuple[Item, asyncio.Future]] = []  # items whose bytes another item carries
        for item in batch:
            if is_url(item.source):
                elements.append(item.source.encode())
                live.append(item)
                continue
            try:
                data = Path(item.source).read_bytes()
            except OSError as exc:
                self._fail(item, f"cannot read the file: {exc}")
                continue
            digest = hashlib.sha256(data).digest()
            known = self._contents.get(digest)
            if known is not None:
                twins.append((item, known))
                continue
            self._contents[digest] = owned[item.id] = asyncio.get_running_loop().create_future()
            elements.append(data)
            live.append(item)
        try:
            await self._send(client, elements, live, owned)
        finally:
            for future in owned.values():  # anything not answered: its twins fail with it
                if not future.done():
                    future.set_result("its request did not finish")
        for item, future in twins:
            outcome = await future
            if isinstance(outcome, str):
                self._fail(item, f"same bytes as a file that failed: {outcome}")
            else:
                self.pending.append((item.id, item.source, outcome))
                self.embedded += 1
        self._forget_old_contents()

    def _settle(self, owned: dict[str, asyncio.Future], item: Item, outcome: np.ndarray | str) -> None:
        future = owned.get(item.id)
        if future is not None and not future.done():
            future.set_result(outcome)
            if not isinstance(outcome, str):
                self._content_bytes += outcome.nbytes

    def _forget_old_contents(self) -> None:
        while self._content_bytes > KNOWN_CONTENT_BYTES and self._contents:
            digest, future = next(iter(self._contents.items()))
            if not future.done():
                break
            del self._contents[digest]
            if not isinstance(future.result(), str):
                self._content_bytes -= future.result().nbytes

    async def _send(
        self, client: httpx.AsyncClient, elements: list[bytes], live: list[Item], owned: dict
    ) -> None:
        attempts = {CONNECTION: 0, BUSY: 0, SERVER_ERROR: 0}
        while live:
            server = next(self._servers)
            try:
                vectors = await self._post(client, server, elements)
            except RetryableError as exc:
                attempts[exc.kind] += 1
                if attempts[exc.kind] > self.settings.retries:
                    for item in live:
                        message = f"gave up after {self.settings.retries} retries ({exc.kind}): {exc}"
                        self._fail(item, message)
                        self._settle(owned, item, message)
                    return
                wait = self._backoff(attempts[exc.kind]) if exc.wait_s is None else exc.wait_s
                await asyncio.sleep(min(wait, self.settings.max_retry_after_s))
                continue
            except _RefusedElement as refused:
                # The server names the bad element: list it, send the rest again.
                self._fail(live[refused.index], refused.message)
                self._settle(owned, live[refused.index], refused.message)
                del live[refused.index], elements[refused.index]
                continue
            except _Refused as refused:
                for item in live:
                    self._fail(item, refused.message)
                    self._settle(owned, item, refused.message)
                return
            finite = np.isfinite(vectors).all(axis=1)
            for item, vector, ok in zip(live, vectors, finite, strict=True):
                if ok:
                    row = vector.copy()
                    self.pending.append((item.id, item.source, row))
                    self.embedded += 1
                    self._settle(owned, item, row)
                else:
                    message = "the server answered a NaN or infinite embedding"
                    self._fail(item, message)
                    self._settle(owned, item, message)
            return

    def _backoff(self, attempt: int) -> float:
        return min(30.0, self.settings.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    async def _post(self, client: httpx.AsyncClient, server: str, elements: list[bytes]) -> np.ndarray:
        body, header_length = encode_request(elements, self.settings.pooling, self.settings.normalize)
        url = f"{server.rstrip('/')}/v2/models/{self.settings.model}/infer"
        try:
            response = await client.post(
                url, content=body, headers={"Inference-Header-Content-Length": str(header_length)}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise RetryableError(f"{server}: {type(exc).__name__}: {exc}", CONNECTION) from None
        except httpx.HTTPError as exc:  # the connection broke during the request
            raise RetryableError(f"{server}: {type(exc).__name__}: {exc}", SERVER_ERROR) from None
        if response.status_code == 200:
            vectors = decode_embeddings(response, len(elements))
            if self.dim is None:
                self.dim = vectors.shape[1]
            elif vectors.shape[1] != self.dim:
                raise MalformedAnswer(
                    f"{server} answered {vectors.shape[1]}-dimensional embeddings; this run's are "
                    f"{self.dim}-dimensional (are all the servers serving the same model?)"
                )
            return vectors
        message = _error_message(response)
        if response.status_code in (503, 429):
            retry_after = response.headers.get("retry-after", "").strip()
            wait = float(retry_after) if retry_after.isdigit() else None
            raise RetryableError(f"{response.status_code} {message}", BUSY, wait)
        if response.status_code >= 500:
            raise RetryableError(f"{response.status_code} {message}", SERVER_ERROR)
        index = _element_index(message)
        if response.status_code == 400 and index is not None and index < len(elements):
            raise _RefusedElement(index, message)
        raise _Refused(f"{response.status_code} {message}")


class _Refused(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _RefusedElement(_Refused):
    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def _element_index(message: str) -> int | None:
    marker = "input 'image' element "
    if marker not in message:
        return None
    digits = message.split(marker, 1)[1].split(":", 1)[0]
    return int(digits) if digits.isdigit() else None


# --- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.client", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source", type=Path, help="a folder, a text file of URLs/paths, or a .csv/.parquet file"
    )
    parser.add_argument("--column", help="the CSV/Parquet column of URLs or paths (default: the first)")
    parser.add_argument(
        "--server", action="append", required=True, help="server base URL (repeat for several)"
    )
    parser.add_argument("--model", default="mobilenet-v2", help="model name in /v2/models/<name>/infer")
    parser.add_argument("--out", type=Path, required=True, help="output .parquet, or .npy (+ .ids.jsonl)")
    parser.add_argument("--batch", type=int, default=16, help="images per request")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument(
        "--retries",
        type=int,
        default=8,
        help="retries of one batch for each kind of failure: refused connections; 503/429; "
        "5xx and malformed answers",
    )
    parser.add_argument(
        "--max-retry-after",
        type=float,
        default=60.0,
        help="longest wait a server's Retry-After can ask for (s)",
    )
    parser.add_argument("--backoff", type=float, default=0.5, help="first backoff in seconds (doubles)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for one request")
    parser.add_argument("--pooling", choices=["cls", "mean", "max"], help="default: the server's")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [name for name in ("pyarrow", "tqdm") if not is_installed(name)]
    if missing:
        sys.exit(
            f"python -m app.client needs {' and '.join(missing)}, which the server's requirements do not "
            "install: pip install -r requirements-client.txt"
        )
    if args.out.suffix not in (".parquet", ".npy"):
        sys.exit("--out must end in .parquet or .npy")
    output = Output(args.out)
    items = read_items(args.source, args.column)
    done = output.done_ids()
    todo = [item for item in items if item.id not in done]
    settings = Settings(
        args.server,
        args.model,
        args.batch,
        args.concurrency,
        args.retries,
        args.backoff,
        args.timeout,
        max_retry_after_s=args.max_retry_after,
        pooling=args.pooling,
        normalize=args.normalize,
    )
    from tqdm import tqdm

    progress = tqdm(total=len(todo), unit="img", disable=args.no_progress, dynamic_ncols=True)
    embedder = BulkEmbedder(settings, output, progress)
    started = time.perf_counter()
    interrupted = False
    try:
        asyncio.run(embedder.run(todo))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        embedder.flush()  # whatever finished before an interruption is kept
        rows = output.assemble()
        with output.failures_path.open("w") as handle:
            for failure in embedder.failures:
                handle.write(json.dumps(failure) + "\n")
    elapsed = time.perf_counter() - started
    print(
        f"{embedder.embedded} embedded in {elapsed:.1f} s "
        f"({embedder.embedded / max(elapsed, 1e-9):.1f} img/s), "
        f"{len(done)} already done, {len(embedder.failures)} failed (listed in {output.failures_path}); "
        f"{rows} rows in {args.out}" + (" (interrupted: run again to resume)" if interrupted else ""),
        file=sys.stderr,
    )
    if interrupted:
        return 130
    return 1 if embedder.failures else 0


if __name__ == "__main__":
    sys.exit(main())
