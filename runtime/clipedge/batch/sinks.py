"""Batch outputs: JSONL, CSV or Parquet, chosen by extension; appended and flushed as batches finish.

Row schema: id, image (path/URL, or "<base64, N chars>"), labels, probs, top_label, top_score, error.
In CSV, labels and probs are JSON-encoded lists. `done_ids` reads what an output already holds so that
`--resume` skips it; a JSONL/CSV line cut short by a crash is dropped and rewritten. Parquet cannot be
appended to: its writer streams into `<out>.partial` (old rows first when resuming) and the file is
renamed into place when the run ends, Ctrl-C included; a hard kill leaves the previous file intact.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

FIELDS = ["id", "image", "top_label", "top_score", "labels", "probs", "error"]
FORMATS = (".jsonl", ".csv", ".parquet")


class OutputError(ValueError):
    """An output path that cannot be written (checked before any work starts)."""


def check_output(path: str | Path, resume: bool) -> Path:
    out = Path(path)
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
    return out


def done_ids(path: Path) -> set[str]:
    """Ids already in an output (for --resume); also trims a JSONL/CSV file cut mid-line by a crash."""
    if not path.exists():
        return set()
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return {str(x) for x in pq.read_table(path, columns=["id"]).column("id").to_pylist()}
        except Exception as e:
            raise OutputError(f"{path}: cannot read the existing output to resume ({e})") from None
    _trim_partial_line(path)
    ids: set[str] = set()
    with open(path, newline="", encoding="utf-8") as f:
        if suffix == ".jsonl":
            for line in f:
                if line.strip():
                    ids.add(str(json.loads(line)["id"]))
        else:
            ids = {row["id"] for row in csv.DictReader(f)}
    return ids


def _trim_partial_line(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


class Writer:
    """Appends result rows to an output file and flushes after each batch."""

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
                self._csv = csv.DictWriter(self._f, fieldnames=FIELDS)
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


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of an output file (for tests and tools), lists decoded."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        r["labels"], r["probs"] = json.loads(r["labels"]), json.loads(r["probs"])
        r["top_score"] = float(r["top_score"]) if r["top_score"] else None
        r["top_label"] = r["top_label"] or None
        r["error"] = r["error"] or None
        rows.append(r)
    return rows
