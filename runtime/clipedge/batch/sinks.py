"""Batch outputs, appended and flushed as batches finish, in one of two layouts:

- native (any input): JSONL, CSV or Parquet, chosen by extension. Row schema: id, image (path/URL, or
  "<base64, N chars>"), top_label, top_score, labels, probs, error; in CSV, labels and probs are
  JSON-encoded lists.
- azure (Azure's batch input): `predictions.csv` exactly as Azure's batch endpoint writes it, no header,
  columns row_number_per_file (the row's 0-based position in its input file), preds (JSON list of
  probabilities), labels (JSON list), file_name (the input CSV's name), rows in input order. A failed row
  keeps its place with preds empty and labels []; its reason goes to `<output stem>.errors.csv` beside it
  (file_name, row_number_per_file, error) and to stderr. Azure's notebook reads the file with
  `pd.read_csv(f, header=None, names=["row_number_per_file", "preds", "labels", "file_name"])`.

`done_ids` reads what an output already holds so that `--resume` skips it; a JSONL/CSV line cut short by a
crash is dropped and rewritten, anything else that cannot be read is an OutputError naming the line.
Parquet cannot be appended to: its writer streams into `<out>.partial` (old rows first when resuming) and
the file is renamed into place when the run ends, Ctrl-C included; a hard kill leaves the previous file.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, TextIO

FIELDS = ["id", "image", "top_label", "top_score", "labels", "probs", "error"]
AZURE_FIELDS = ["row_number_per_file", "preds", "labels", "file_name"]
ERROR_FIELDS = ["file_name", "row_number_per_file", "error"]
FORMATS = (".jsonl", ".csv", ".parquet")


class OutputError(ValueError):
    """An output path that cannot be written or resumed (checked before any work starts)."""


def check_output(path: str | Path, resume: bool, layout: str = "native") -> Path:
    """The output file for a path and layout; an azure output may be a folder (predictions.csv inside).

    Raises:
        OutputError: unknown format, exists without --resume, folder missing or not writable.
    """
    out = Path(path)
    if layout == "azure" and (out.is_dir() or str(path).endswith(("/", os.sep))):
        try:
            out.mkdir(parents=True, exist_ok=True)  # an explicit folder, as Azure's output folder
        except OSError as e:
            raise OutputError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
        out = out / "predictions.csv"
    if layout == "azure" and out.suffix.lower() != ".csv":
        raise OutputError(f"{out}: Azure's layout writes a .csv file (e.g. predictions.csv), or give a folder")
    if out.suffix.lower() not in FORMATS:
        raise OutputError(f"{out}: output must end in {', '.join(FORMATS)}")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder, not a file")
    if out.exists() and not resume:
        raise OutputError(f"{out}: exists (use --resume to continue it, or choose another path)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise OutputError(f"{out}: not writable")
    _probe(out)
    return out


def _probe(out: Path) -> None:
    """Open the output for appending now, so that a path that cannot be written (a dangling link, /proc,
    a read-only mount) is refused before any work; a file created here is removed again."""
    existed = out.exists()
    try:
        with open(out, "ab"):
            pass
    except OSError as e:
        raise OutputError(f"{out}: cannot be written ({e.strerror or e})") from None
    if not existed:
        out.unlink(missing_ok=True)


def errors_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors.csv")


def done_ids(path: Path, layout: str = "native") -> set[str]:
    """Ids already in an output (for --resume); also trims a JSONL/CSV file cut mid-line by a crash.

    Raises:
        OutputError: the output cannot be read (naming the line), or is not a clipedge output.
    """
    if not path.exists() or path.stat().st_size == 0:
        return set()
    _check_ours(path, layout)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return {str(x) for x in pq.read_table(path, columns=["id"]).column("id").to_pylist()}
        except Exception as e:
            raise OutputError(f"{path}: cannot read the existing output to resume ({e})") from None
    _trim_partial_line(path)
    ids: set[str] = set()
    try:
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if line.strip():
                        ids.add(_jsonl_id(line, path, n))
        elif layout == "azure":
            for line, row in _csv_records(path):
                if len(row) != len(AZURE_FIELDS):
                    raise OutputError(f"{path}: line {line} is not an Azure prediction row; cannot resume it")
                ids.add(f"{row[3]}:{row[0]}")
        else:
            records = _csv_records(path)
            first: tuple[int, list[str]] = next(records, (0, []))
            header = first[1]
            if "id" not in header:
                raise OutputError(f"{path}: has no id column; not a clipedge output, cannot resume it")
            at = header.index("id")
            ids = {row[at] for _, row in records if len(row) > at}
    except UnicodeDecodeError:
        raise OutputError(f"{path}: is not UTF-8 text; not a clipedge output, cannot resume it") from None
    return ids


def _csv_records(path: Path):
    """(line, fields) of a CSV output, with no field-size limit (a row of many labels is long)."""
    from .csvrecords import iter_records

    with open(path, "rb") as f:
        for rec in iter_records(f):
            if rec.fields is None:
                raise OutputError(f"{path}: {rec.error}; cannot read the existing output to resume")
            if rec.fields:
                yield rec.line, rec.fields


def _jsonl_id(line: str, path: Path, n: int) -> str:
    try:
        return str(json.loads(line)["id"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise OutputError(f"{path}: line {n} is not a clipedge result row; cannot resume this output") from None


ROW_START = b'{"id": '  # every JSONL row clipedge writes starts so


def _check_ours(path: Path, layout: str) -> None:
    """Refuse to resume (and so to trim or append to) a file that clipedge did not write."""
    with open(path, "rb") as f:
        head = f.read(4096)
    first = head.split(b"\n", 1)[0]
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        ours = first.startswith(ROW_START) or ROW_START.startswith(first)
    elif suffix == ".csv" and layout != "azure":
        ours = first.rstrip(b"\r") == ",".join(FIELDS).encode() or ",".join(FIELDS).encode().startswith(first)
    elif suffix == ".csv":
        ours = first[:1].isdigit()  # row_number_per_file first, no header
    else:
        ours = head[:4] == b"PAR1"
    if not ours:
        raise OutputError(f"{path}: is not a clipedge output (in the {layout} layout); refusing to resume into it")


def output_labels(path: Path) -> list[str] | None:
    """The labels of the first row of a native output (None when there is none)."""
    if not path.exists() or path.stat().st_size == 0 or path.suffix.lower() not in FORMATS:
        return None
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(path).iter_batches(batch_size=1, columns=["labels"])
            batch = next(rows, None)
            return batch.to_pylist()[0]["labels"] if batch is not None and batch.num_rows else None
        if path.suffix.lower() == ".jsonl":
            with open(path, encoding="utf-8") as f:
                line = f.readline()
            return json.loads(line)["labels"] if line.endswith("\n") else None
        records = _csv_records(path)
        _, header = next(records)
        _, first = next(records)
        return json.loads(dict(zip(header, first, strict=False))["labels"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


def _trim_partial_line(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


class Writer:
    """Appends native result rows to an output file and flushes after each batch."""

    def __init__(self, path: Path):
        self.path = path
        self.suffix = path.suffix.lower()
        self.rows = 0
        if self.suffix == ".parquet":
            self._init_parquet()
        else:
            new = not path.exists() or path.stat().st_size == 0
            self._f = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - kept open for appends
            if self.suffix == ".csv":
                self._csv = csv.DictWriter(self._f, fieldnames=FIELDS, extrasaction="ignore")
                if new:
                    self._csv.writeheader()

    def _init_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._schema = pa.schema(
            [
                ("id", pa.string()),
                ("image", pa.string()),
                ("top_label", pa.string()),
                ("top_score", pa.float64()),
                ("labels", pa.list_(pa.string())),
                ("probs", pa.list_(pa.float64())),
                ("error", pa.string()),
            ]
        )
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._pq = pq.ParquetWriter(self._partial, self._schema)
        if self.path.exists():  # resume: carry the old rows over
            old = pq.read_table(self.path).select(FIELDS).cast(self._schema)
            self._pq.write_table(old)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        rows = [{k: r[k] for k in FIELDS} for r in rows]
        if self.suffix == ".jsonl":
            self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        elif self.suffix == ".csv":
            for r in rows:
                self._csv.writerow({**r, "labels": json.dumps(r["labels"]), "probs": json.dumps(r["probs"])})
        else:
            import pyarrow as pa

            self._pq.write_table(pa.Table.from_pylist(rows, schema=self._schema))
        if self.suffix != ".parquet":
            self._f.flush()
        self.rows += len(rows)

    def close(self) -> None:
        if self.suffix == ".parquet":
            self._pq.close()
            os.replace(self._partial, self.path)
        else:
            self._f.close()


class AzureWriter:
    """Appends rows in Azure's predictions.csv layout (no header) and failed rows to the errors file."""

    def __init__(self, path: Path):
        self.path, self.rows = path, 0
        self._f = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - kept open for appends
        self._csv = csv.writer(self._f)
        self._errors_path = errors_path(path)
        self._errors: TextIO | None = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        failed = []
        for r in rows:
            if r["error"]:
                self._csv.writerow([r["row"], "", "[]", r["group"]])
                failed.append([r["group"], r["row"], r["error"]])
            else:
                self._csv.writerow([r["row"], json.dumps(r["probs"]), json.dumps(r["labels"]), r["group"]])
        self._f.flush()
        if failed:
            if self._errors is None:
                new = not self._errors_path.exists()
                self._errors = open(self._errors_path, "a", newline="", encoding="utf-8")  # noqa: SIM115
                if new:
                    csv.writer(self._errors).writerow(ERROR_FIELDS)
            csv.writer(self._errors).writerows(failed)
            self._errors.flush()
        self.rows += len(rows)

    def close(self) -> None:
        self._f.close()
        if self._errors is not None:
            self._errors.close()


def open_writer(path: Path, layout: str = "native") -> Writer | AzureWriter:
    return AzureWriter(path) if layout == "azure" else Writer(path)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a native output file (for tests and tools), lists decoded."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = []
    records = _csv_records(path)
    _, header = next(records, (0, []))
    for _, fields in records:
        r = dict(zip(header, fields, strict=False))
        r["labels"], r["probs"] = json.loads(r["labels"]), json.loads(r["probs"])
        r["top_score"] = float(r["top_score"]) if r["top_score"] else None
        r["top_label"] = r["top_label"] or None
        r["error"] = r["error"] or None
        rows.append(r)
    return rows
