"""Batch inputs, read lazily: a folder of images, a CSV / JSONL / Parquet table with an image column, or
Azure's batch layout (a folder of CSV files with `image` and `text` columns, labels in each file's first
row). Every input becomes a stream of Items; nothing is loaded all at once.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..images import IMAGE_EXTENSIONS
from ..templates import parse_labels

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


class InputError(ValueError):
    """An input that cannot be read at all (missing, unknown format, no image column, ...)."""


@dataclass(frozen=True)
class Item:
    id: str  # unique within the input: relative path, row number or id column, "file.csv:row" for Azure
    image: str  # path, URL or base64
    group: str = ""  # rows of one group share labels (Azure: one CSV file)


@dataclass(frozen=True)
class Group:
    """A run of items that share labels: the whole input, or one Azure CSV file."""

    name: str
    labels: list[str] | None  # None: the labels given on the command line
    items: Iterator[Item]


def describe_ref(value: str) -> str:
    """What the output records as the image: the path or URL, never a whole base64 string."""
    v = value.strip()
    if v.startswith(("http://", "https://")) or (len(v) < 1024 and "\n" not in v and not v.startswith("data:")):
        return v
    return f"<base64, {len(v)} chars>"


def open_input(source: str | Path, image_column: str = "image", id_column: str | None = None) -> list[Group]:
    """The groups of an input; raises InputError for an input that cannot be read at all."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        csvs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
        if csvs and _is_azure_csv(csvs[0]):
            return [_azure_group(p) for p in csvs]
        return [Group(str(path), None, _folder_items(path))]
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"{path}: unknown input format (a folder of images, or {', '.join(TABLE_SUFFIXES)})")
    columns = table_columns(path)
    if image_column not in columns:
        raise InputError(f"{path}: no column {image_column!r} (columns: {', '.join(columns)}); use --image-column")
    if id_column and id_column not in columns:
        raise InputError(f"{path}: no column {id_column!r} for --id-column")
    return [Group(str(path), None, _table_items(path, image_column, id_column))]


def _folder_items(root: Path) -> Iterator[Item]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                p = Path(dirpath) / name
                yield Item(p.relative_to(root).as_posix(), str(p))


def table_columns(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return next(csv.reader(f), [])
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        return list(json.loads(line))
            return []
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise InputError(f"{path}: cannot read the table ({e})") from None


def _table_rows(path: Path) -> Iterator[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = {"__error__": f"line {n + 1} is not valid JSON"}
                yield row if isinstance(row, dict) else {"__error__": f"line {n + 1} is not a JSON object"}
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()


def _table_items(path: Path, image_column: str, id_column: str | None) -> Iterator[Item]:
    base = path.parent
    for n, row in enumerate(_table_rows(path)):
        ident = str(row.get(id_column)) if id_column and row.get(id_column) is not None else str(n)
        value = row.get(image_column)
        if "__error__" in row or not isinstance(value, str) or not value.strip():
            # an unusable row still becomes an item: the pipeline records its error and goes on
            yield Item(ident, "" if not isinstance(value, str) else value)
            continue
        v = value.strip()
        if not v.startswith(("http://", "https://", "data:")) and len(v) < 1024 and not Path(v).is_absolute():
            candidate = base / v  # relative paths are relative to the table's folder
            if candidate.exists():
                v = str(candidate)
        yield Item(ident, v)


def _is_azure_csv(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return "image" in header and "text" in header


def _azure_group(path: Path) -> Group:
    with open(path, newline="", encoding="utf-8") as f:
        first = next(csv.DictReader(f), None)
    labels = parse_labels(first.get("text") or "") if first else []
    return Group(path.name, labels, _azure_items(path))


def _azure_items(path: Path) -> Iterator[Item]:
    for n, row in enumerate(_table_rows(path)):
        yield Item(f"{path.name}:{n}", (row.get("image") or "").strip(), group=path.name)


def count_items(source: str | Path) -> int | None:
    """How many items an input holds, cheaply (for the progress bar's ETA); None when unknown."""
    path = Path(source)
    try:
        if path.is_dir():
            csvs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
            if csvs and _is_azure_csv(csvs[0]):
                return sum(_count_lines(p) - 1 for p in csvs)
            return sum(1 for _ in _folder_items(path))
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        lines = _count_lines(path)
        return lines - 1 if path.suffix.lower() == ".csv" else lines
    except (OSError, ValueError):
        return None


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())
