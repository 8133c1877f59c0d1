"""Batch inputs, read lazily: a folder of images, a CSV / JSONL / Parquet table with an image column, or
Azure's batch layout (a folder of CSV files with `image` and `text` columns, labels in each file's first
row). Every input becomes a stream of Items; nothing is loaded all at once, and a row that cannot be read
(not UTF-8, over the row cap, not JSON, no image) is an Item carrying its error, so the job goes on. Only an
input whose header cannot be read is refused up front.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..images import IMAGE_EXTENSIONS, printable, safe_url
from ..labels import parse_labels
from .csvrecords import ROW_CAP, Record, count_records, iter_records

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


class InputError(ValueError):
    """An input that cannot be read at all (missing, unknown format, no image column, duplicate ids...)."""


@dataclass(frozen=True)
class Item:
    id: str  # unique within the input: relative path, row number or id column, "file.csv:row" for Azure
    image: str  # path, URL or base64
    group: str = ""  # rows of one group share labels (Azure: one CSV file)
    row: int = 0  # position in its file (0-based; Azure's row_number_per_file)
    error: str | None = None  # the row could not be read: it becomes an error row


@dataclass
class Group:
    """A run of items that share labels: the whole input, or one Azure CSV file (whose first row's text
    holds the labels, read when the group is scored). `error`: the file cannot be read at all (its rows
    are unknown); the job reports it and goes on with the other files."""

    name: str
    items: Iterator[Item]
    first_row: Callable[[], dict | str | None] | None = None  # Azure: the first row, or its error
    error: str | None = None
    _labels: list[str] | None = field(default=None, repr=False)
    labels_problem: str | None = field(default=None, repr=False)

    @property
    def azure(self) -> bool:
        return self.first_row is not None

    def file_labels(self) -> list[str]:
        """Azure: the labels in the first row's text ([] when there are none, or when the first row
        cannot be read; `labels_problem` then says why)."""
        if self._labels is None:
            row = self.first_row() if self.first_row else None
            if isinstance(row, str):
                self.labels_problem = f"{self.name}: its first row cannot be read ({row}), so its labels are unknown"
                row = None
            text = row.get("text") if isinstance(row, dict) else None
            self._labels = parse_labels(text if isinstance(text, str) else "")
        return self._labels


def describe_ref(value: str) -> str:
    """What the output records as the image: the path or URL, never a whole base64 string."""
    v = value.strip()
    if v[:8].lower().startswith(("http://", "https://")):
        return safe_url(v)  # no credentials or query (signed URLs) in result files
    if len(v) < 1024 and "\n" not in v and not v.startswith("data:"):
        return printable(v)
    return f"<base64, {len(v)} chars>"


def natural_key(name: str) -> list:
    """ "2batch.csv" before "10batch.csv": Azure's notebook names its files by their first row number."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def azure_files(folder: Path) -> list[Path]:
    """The CSV files of a folder in Azure's batch layout (`image` and `text` columns), or [] if it is not."""
    csvs = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() == ".csv" and p.is_file()), key=lambda p: natural_key(p.name)
    )
    first_error = None
    for f in csvs:  # the first file with a readable header tells the layout
        try:
            header = table_columns(f)
        except InputError as e:
            first_error = first_error or e
            continue
        return csvs if "image" in header and "text" in header else []
    if first_error is not None:
        raise first_error
    return []


def open_input(
    source: str | Path, image_column: str = "image", id_column: str | None = None, check_ids: bool = True
) -> list[Group]:
    """The groups of an input (`check_ids`: refuse an --id-column with repeated ids, reading it once).

    Raises:
        InputError: missing, unknown format, unreadable header, no such column, or duplicate ids.
    """
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        files = azure_files(path)
        if files:
            return [_azure_group(p) for p in files]
        return [Group(str(path), _folder_items(path))]
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"{path}: unknown input format (a folder of images, or {', '.join(TABLE_SUFFIXES)})")
    columns = table_columns(path)
    if image_column not in columns:
        raise InputError(f"{path}: no column {image_column!r} (columns: {', '.join(columns)}); use --image-column")
    if id_column:
        if id_column not in columns:
            raise InputError(f"{path}: no column {id_column!r} for --id-column")
        if check_ids:
            check_unique_ids(path, id_column)
    return [Group(str(path), _table_items(path, image_column, id_column))]


def _folder_items(root: Path) -> Iterator[Item]:
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                p = Path(dirpath) / name  # read by its real name; recorded by a printable one
                yield Item(printable(p.relative_to(root).as_posix()), str(p), row=n)
                n += 1


def table_columns(path: Path) -> list[str]:
    """A table's column names. Raises InputError when the header cannot be read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, "rb") as f:
                header = next(iter_records(f), None)
            if header is None or header.fields is None:
                raise InputError(f"{path}: cannot read the header ({header.error if header else 'empty file'})")
            return header.fields
        if suffix == ".jsonl":
            for _, row in _jsonl_rows(path):
                if isinstance(row, dict):
                    return list(row)
                raise InputError(f"{path}: cannot read the first row ({row})")
            return []
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    except OSError as e:
        raise InputError(f"{path}: cannot read the table ({e.strerror or e})") from None
    except InputError:
        raise
    except Exception as e:  # pyarrow's errors on a file that is not Parquet
        raise InputError(f"{path}: cannot read the table ({type(e).__name__}: {e})") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line, row dict or error) for each data row of a CSV file."""
    with open(path, "rb") as f:
        records = iter_records(f, ROW_CAP)
        header = next(records, None)
        names = header.fields if header and header.fields else []
        for rec in records:
            if rec.fields == []:
                continue  # blank line
            yield rec.line, _as_row(rec, names)


def _as_row(rec: Record, names: list[str]) -> dict | str:
    if rec.fields is None:
        return rec.error or f"line {rec.line}: cannot be read"
    return dict(zip(names, rec.fields, strict=False))


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line, row dict or error) for each non-blank line of a JSON-lines file."""
    with open(path, "rb") as f:
        for n, raw in enumerate(_capped_lines(f, ROW_CAP), start=1):
            if raw is None:
                yield n, f"line {n}: row exceeds the limit of {ROW_CAP:,} bytes"
                continue
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield n, f"line {n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start})"
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield n, f"line {n}: not valid JSON ({e.msg} at column {e.colno})"
                continue
            except (RecursionError, ValueError) as e:
                yield n, f"line {n}: cannot be read ({type(e).__name__})"
                continue
            yield n, row if isinstance(row, dict) else f"line {n}: not a JSON object"


def _capped_lines(f, cap: int) -> Iterator[bytes | None]:
    """Lines of a binary file; None for a line over `cap` bytes, which is skipped in chunks (never held)."""
    while True:
        line = f.readline(cap + 1)
        if not line:
            return
        if len(line) > cap and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        yield line


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict | str]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        for row in batch.to_pylist():
            yield f"row {n}", row
            n += 1


def table_rows(path: Path) -> Iterator[tuple[str, dict | str]]:
    """(where: "line N" or "row N", row dict or an error message naming where) for each row of a table."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ((f"line {n}", row) for n, row in _csv_rows(path))
    if suffix == ".jsonl":
        return ((f"line {n}", row) for n, row in _jsonl_rows(path))
    return _parquet_rows(path)


def _table_items(path: Path, image_column: str, id_column: str | None) -> Iterator[Item]:
    base = path.parent
    for n, (where, row) in enumerate(table_rows(path)):
        if isinstance(row, str):  # an id of its own, which no --id-column value can take
            yield Item(str(n) if not id_column else f"{where} (unreadable)", "", row=n, error=f"{path.name} {row}")
            continue
        ident = str(row.get(id_column)) if id_column and row.get(id_column) is not None else str(n)
        value = row.get(image_column)
        if value is not None and not isinstance(value, str):
            yield Item(ident, "", row=n, error=f"{path.name} {where}: the image value is not a string")
            continue
        if not isinstance(value, str) or not value.strip():
            yield Item(ident, "", row=n, error=f"{path.name} {where}: row has no image value")
            continue
        v = value.strip()
        if not v.startswith(("http://", "https://", "data:")) and len(v) < 1024 and not Path(v).is_absolute():
            candidate = base / v  # relative paths are relative to the table's folder
            if candidate.exists():
                v = str(candidate)
        yield Item(ident, v, row=n)


def check_unique_ids(path: Path, id_column: str) -> None:
    """--id-column must name each row once (resume skips by id): refused up front, naming the first
    repeated id's lines. Reads the table once more; rows that cannot be read are left to the job."""
    seen: dict[str, str] = {}
    for where, row in table_rows(path):
        if isinstance(row, str) or row.get(id_column) is None:
            continue
        ident = str(row[id_column])
        if ident in seen:
            raise InputError(
                f"{path}: id {ident[:60]!r} in column {id_column!r} appears twice ({seen[ident]} and {where}); "
                "ids must be unique so that --resume can skip done rows"
            )
        seen[ident] = where


def _azure_group(path: Path) -> Group:
    def first_row() -> dict | str | None:
        for _, row in _csv_rows(path):
            return row
        return None

    try:
        columns = table_columns(path)
    except InputError as e:  # this file only: the others are still scored
        return Group(path.name, iter(()), first_row, error=str(e))
    if "image" not in columns:
        return Group(path.name, iter(()), first_row, error=f"{path}: no column 'image' (columns: {', '.join(columns)})")
    return Group(path.name, _azure_items(path), first_row)


def _azure_items(path: Path) -> Iterator[Item]:
    """The rows of one Azure CSV; errors name the line (the item's id names the file and row)."""
    for n, (line, row) in enumerate(_csv_rows(path)):
        ident = f"{path.name}:{n}"
        if isinstance(row, str):
            yield Item(ident, "", group=path.name, row=n, error=row)
            continue
        image = (row.get("image") or "").strip()
        error = None if image else f"line {line}: row has no image value"
        yield Item(ident, image, group=path.name, row=n, error=error)


def count_items(source: str | Path) -> int | None:
    """How many items an input holds (for the progress bar's ETA), reading CSVs' records without decoding
    them (base64 cells span many lines); None when unknown."""
    path = Path(source)
    try:
        if path.is_dir():
            files = azure_files(path)
            if files:
                return sum(_count_csv(p) for p in files)
            return sum(1 for _ in _folder_items(path))
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if suffix == ".csv":
            return _count_csv(path)
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except (OSError, ValueError):
        return None
    except Exception:
        return None


def _count_csv(path: Path) -> int:
    with open(path, "rb") as f:
        return max(0, count_records(f) - 1)
