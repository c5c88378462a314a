"""Result files of a library run (.jsonl, .csv, .parquet): rows appended as they finish, read back to resume.

Every `write` reaches the disk (flush + fsync) before it returns, so a crash or power loss loses at most the rows
in flight; opening a file again repairs a torn tail and reports which images are already done.
"""

from __future__ import annotations

import csv
import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from captioner.errors import CaptionerError

FORMATS = (".jsonl", ".csv", ".parquet")


class ResultsError(CaptionerError, ValueError):
    """A result file cannot be appended to: an unknown format, or rows that are not result rows."""


class Results(ABC):
    """An open result file: `done` maps each image already in it to whether it failed; `write` appends rows."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, bool] = {}

    @abstractmethod
    def write(self, rows: Sequence[dict]) -> None:
        """Append rows and make them durable."""

    @abstractmethod
    def close(self) -> None:
        """Finish the file."""

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _remember(self, rows: Sequence[dict]) -> None:
        for row in rows:
            self.done.setdefault(row["image"], "error" in row and bool(row["error"]))


def open_results(path: str | Path) -> Results:
    """Open (creating, or repairing and resuming) the result file whose suffix names its format."""
    path = Path(path)
    kind = {".jsonl": JsonlResults, ".csv": CsvResults, ".parquet": ParquetResults}.get(path.suffix.lower())
    if kind is None:
        raise ResultsError(f"Expected --out to end in {', '.join(FORMATS)}. Received: {path}.")
    if kind is not ParquetResults and path.is_dir():
        raise ResultsError(f"{path} is a directory; --out needs a file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return kind(path)


def flat(row: dict) -> dict:
    """A row for a table: nested fields become `parent_child` columns, lists and other values JSON text."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update({f"{key}_{k}": v for k, v in flat(value).items()})
        elif value is None or isinstance(value, str | int | float | bool):
            out[key] = value
        else:
            out[key] = json.dumps(value)
    return out


def _durable(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _repair_tail(path: Path, records: list[tuple[int, bool]], size: int) -> int:
    """Cut a torn or garbled tail (records: start offset and validity); return how many valid records remain.

    Only the end of a file can be torn by a crash; a bad record followed by good ones is someone else's edit.
    """
    valid = len(records)
    while valid and not records[valid - 1][1]:
        valid -= 1
    if bad := [i for i, (_, ok) in enumerate(records[:valid]) if not ok]:
        raise ResultsError(
            f"Record {bad[0] + 1} of {path} is not a result row; fix or remove it, or write to a new file."
        )
    end = records[valid][0] if valid < len(records) else size
    if end < size:
        with path.open("r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    return valid


class JsonlResults(Results):
    """One JSON object per line, the `--json` fields."""

    def __init__(self, path: Path):
        super().__init__(path)
        data = path.read_bytes() if path.exists() else b""
        records, rows, start = [], [], 0
        for line in data.splitlines(keepends=True):
            row = _json_row(line) if line.endswith(b"\n") else None
            records.append((start, row is not None))
            rows.append(row)
            start += len(line)
        valid = _repair_tail(path, records, len(data))
        self._remember(rows[:valid])
        self._file = path.open("a", encoding="utf-8")

    def write(self, rows: Sequence[dict]) -> None:
        self._file.write("".join(json.dumps(row, ensure_ascii=True) + "\n" for row in rows))
        _durable(self._file)
        self._remember(rows)

    def close(self) -> None:
        self._file.close()


def _json_row(line: bytes) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("image"), str) else None


class CsvResults(Results):
    """A header and one flattened row per image (`greedy_caption`, `greedy_log_prob`, ..., `error`)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._columns: list[str] | None = None
        self._waiting: list[dict] = []  # error rows before the first caption row, which fixes the columns
        text = path.read_bytes().decode("utf-8", "surrogateescape") if path.exists() else ""
        if text:
            self._resume(text)
        self._file = path.open("a", encoding="utf-8", errors="surrogateescape", newline="")

    def _resume(self, text: str) -> None:
        spans = _record_spans(text)
        records, rows, start = [], [], 0
        header: list[str] = []
        for span, fields in zip(spans, csv.reader(io.StringIO(text, newline="")), strict=False):
            complete = span.endswith("\n") and (not header or len(fields) == len(header))
            if not header and complete:
                header = fields
                if header[0] != "image":
                    raise ResultsError(f"{self.path} is not a result file (its first column is not 'image').")
            else:
                records.append((start, complete))
                rows.append(dict(zip(header, fields, strict=False)))
            start += len(span.encode("utf-8", "surrogateescape"))
        if not header:  # torn while its header was written: nothing in it counts
            records = [(0, False)]
        valid = _repair_tail(self.path, records, start)
        self._remember(rows[:valid])
        self._columns = header or None

    def write(self, rows: Sequence[dict]) -> None:
        flats = [*self._waiting, *map(flat, rows)]
        if self._columns is None:
            if not any("error" not in r for r in flats):
                self._waiting = flats  # written at close, or with the first caption row
                self._remember(rows)
                return
            first = next(r for r in flats if "error" not in r)
            self._columns = [*first, "error"]
            self._writer().writeheader()
        self._waiting = []
        if extra := {k for r in flats for k in r} - set(self._columns):
            raise ResultsError(f"{self.path} has no column for {sorted(extra)}; write this run to a new file.")
        self._writer().writerows(flats)
        _durable(self._file)
        self._remember(rows)

    def _writer(self) -> csv.DictWriter:
        return csv.DictWriter(self._file, self._columns, lineterminator="\n")

    def close(self) -> None:
        if self._waiting:
            self._columns = ["image", "error"]
            self._writer().writeheader()
            self._writer().writerows(self._waiting)
            _durable(self._file)
        self._file.close()


def _record_spans(text: str) -> list[str]:
    """The text of each CSV record, its newline included; a newline inside quotes does not end one."""
    spans, start, quoted = [], 0, False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "\n" and not quoted:
            spans.append(text[start : i + 1])
            start = i + 1
    if start < len(text):
        spans.append(text[start:])
    return spans


class ParquetResults(Results):
    """A folder of Parquet part files, one per write; merged into one part when the run ends (or resumes)."""

    def __init__(self, path: Path):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ResultsError('Parquet output needs pyarrow: pip install -e ".[scale]" (or pyarrow alone).') from e
        super().__init__(path)
        self._pq = pq
        if path.exists() and not path.is_dir():
            raise ResultsError(f"{path} is a file; Parquet output is a folder of part files.")
        path.mkdir(parents=True, exist_ok=True)
        for tmp in path.glob("*.tmp"):
            tmp.unlink()  # a part that was being written when the run stopped; its rows were never counted
        self._merge()
        self._remember(self._read().to_pylist() if self._parts() else [])

    def _parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    def _read(self):
        import pyarrow as pa

        tables = []
        for part in self._parts():
            try:
                tables.append(self._pq.read_table(part))
            except (OSError, pa.ArrowException) as e:
                raise ResultsError(f"{part} is not readable Parquet ({e}); move it away to redo its images.") from e
        table = pa.concat_tables(tables, promote_options="default")
        # A merge stopped between writing the merged part and removing its sources leaves rows twice.
        first = {}
        for i, image in enumerate(table.column("image").to_pylist()):
            first.setdefault(image, i)
        return table.take(list(first.values())) if len(first) < len(table) else table

    def _merge(self) -> None:
        parts = self._parts()
        if len(parts) > 1:
            self._put(self._read())
            for part in parts:
                part.unlink()

    def _put(self, table) -> None:
        parts = self._parts()
        number = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        final = self.path / f"part-{number:05d}.parquet"
        tmp = final.with_suffix(".tmp")
        self._pq.write_table(table, tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def write(self, rows: Sequence[dict]) -> None:
        import pyarrow as pa

        if not rows:
            return
        flats = [flat(r) for r in rows]
        columns = list(dict.fromkeys(k for r in flats for k in r))
        self._put(pa.table({c: [r.get(c) for r in flats] for c in columns}))
        self._remember(rows)

    def close(self) -> None:
        self._merge()
