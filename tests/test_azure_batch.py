"""Azure's batch endpoint input, made the way its notebook (azureml-examples, zero-shot-image-classification-
batch-endpoint.ipynb) makes it: photos read with base64.encodebytes (newline-wrapped), a DataFrame with
image and text columns, files of 10 rows written with DataFrame.to_csv (the unnamed index column first),
labels in each file's first row; and the output read back with the notebook's own line."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from clipedge.cli import main
from PIL import Image

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
SHAPES = sorted((DEMO / "examples").glob("*.png"))
LABELS = ", ".join(p.stem.replace("_", " ") for p in SHAPES)
NOTEBOOK_NAMES = ["row_number_per_file", "preds", "labels", "file_name"]


def camera_jpeg(png: Path, long_side: int = 2400) -> bytes:
    """A demo shape as a phone would store it: upscaled, JPEG quality 95."""
    with Image.open(png) as im:
        big = im.convert("RGB").resize((long_side, long_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def notebook_folder(folder: Path, images: list[bytes], labels: str, pandas3_noop: bool = False) -> Path:
    """The notebook's section 3.2, step by step. `pandas3_noop` keeps its `batch_df["text"].iloc[i] = labels`,
    which under pandas 3's copy-on-write changes nothing; otherwise the labels are set with .loc."""
    folder.mkdir(parents=True, exist_ok=True)
    image_list = [base64.encodebytes(data).decode("utf-8") for data in images]
    batch_df = pd.DataFrame([[image, ""] for image in image_list], columns=["image", "text"])
    for i in range(0, len(batch_df), 10):
        if pandas3_noop:
            with pytest.warns(Warning):  # pandas warns about the chained assignment, and ignores it
                batch_df["text"].iloc[i] = labels
        else:
            batch_df.loc[i, "text"] = labels
        batch_df[i : i + 10].to_csv(folder / f"{i}batch_input.csv")
    return folder


def read_predictions(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, header=None, names=NOTEBOOK_NAMES)  # the notebook's line


@pytest.fixture(scope="module")
def rows_of_images(big_jpegs):
    """25 rows: the six demo shapes as large JPEGs and four camera-sized photos, repeated."""
    shapes = [(camera_jpeg(p), p.stem.replace("_", " ")) for p in SHAPES]
    photos = [(p.read_bytes(), None) for p in big_jpegs]
    pool = shapes + photos
    return [pool[i % len(pool)] for i in range(25)]


def test_notebook_folder_gives_azure_predictions(tmp_path, rows_of_images, capsys):
    folder = notebook_folder(tmp_path / "batch", [d for d, _ in rows_of_images], LABELS)
    cells = [len(x) for x in pd.read_csv(folder / "0batch_input.csv")["image"]]
    assert max(cells) > 1_000_000 and min(cells) > 131_072  # over the csv module's default field limit
    assert sorted(p.name for p in folder.iterdir()) == ["0batch_input.csv", "10batch_input.csv", "20batch_input.csv"]
    out = tmp_path / "out"
    out.mkdir()
    assert main(["batch", str(folder), "-o", str(out), "-m", str(DEMO), "--no-progress"]) == 0
    assert "25 scored, 0 failed" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv"]  # Azure's name; no errors file
    df = read_predictions(out / "predictions.csv")
    assert len(df) == 25
    assert (
        df["file_name"].tolist() == ["0batch_input.csv"] * 10 + ["10batch_input.csv"] * 10 + ["20batch_input.csv"] * 5
    )
    assert df["row_number_per_file"].tolist() == list(range(10)) + list(range(10)) + list(range(5))
    labels = [x.strip() for x in LABELS.split(",")]
    for i, row in df.iterrows():
        preds, names = json.loads(row["preds"]), json.loads(row["labels"])
        assert names == labels and abs(sum(preds) - 1) < 1e-5
        expected = rows_of_images[i][1]
        if expected is not None:  # a demo shape: the trained demo model names it
            assert names[preds.index(max(preds))] == expected


def test_pandas3_notebook_files_have_no_labels(tmp_path, rows_of_images, capsys):
    images = [d for d, _ in rows_of_images[:12]]
    folder = notebook_folder(tmp_path / "batch", images, LABELS, pandas3_noop=True)
    assert pd.read_csv(folder / "0batch_input.csv")["text"].isna().all()  # what users really upload
    out = tmp_path / "predictions.csv"
    assert main(["batch", str(folder), "-o", str(out), "-m", str(DEMO), "--no-progress"]) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    for name in ("0batch_input.csv", "10batch_input.csv"):  # one clear line per file, not one per row
        line = f"clipedge: {name}: no labels in the first row's text, and no labels given"
        assert sum(x.startswith(line) for x in lines) == 1, err
    df = read_predictions(out)
    assert len(df) == 12 and df["preds"].isna().all() and (df["labels"] == "[]").all()
    errors = pd.read_csv(tmp_path / "predictions.errors.csv")
    assert list(errors.columns) == ["file_name", "row_number_per_file", "error"] and len(errors) == 12
    fixed = tmp_path / "with-labels.csv"
    args = ["batch", str(folder), "-o", str(fixed), "-m", str(DEMO), "--no-progress", "--labels", LABELS]
    assert main(args) == 0  # --labels stands in for the missing ones
    df = read_predictions(fixed)
    assert len(df) == 12 and df["preds"].notna().all()
    assert not (tmp_path / "with-labels.errors.csv").exists()


def test_bad_rows_keep_their_place(tmp_path, rows_of_images, capsys):
    """A truncated photo, a byte that is not UTF-8 deep inside a file, a cell over the 32 MiB cap and an
    empty image: each is its row's error, named by file and line, and the rest is scored."""
    good = [d for d, _ in rows_of_images[:4]]
    truncated = rows_of_images[6][0][:50_000]
    folder = notebook_folder(tmp_path / "batch", [*good[:2], truncated, *good[2:]], LABELS)
    path = folder / "0batch_input.csv"
    lines = path.read_bytes().split(b"\n")
    row3 = next(i for i, line in enumerate(lines) if line.startswith(b"3,"))
    lines[row3 + 5] = lines[row3 + 5][:20] + b"\xff\xfe" + lines[row3 + 5][22:]  # inside row 3's base64 cell
    with open(path, "wb") as f:
        f.write(b"\n".join(lines).rstrip(b"\n") + b"\n")
        f.write(b'5,"' + b"QUFB" * (33 * 1024 * 1024 // 4) + b'",\n')  # a 33 MiB cell
        f.write(b"6,,\n")
        f.write(b"7," + base64.b64encode(good[0]) + b",\n")  # unwrapped, unquoted base64 also works
    out = tmp_path / "predictions.csv"
    assert main(["batch", str(folder), "-o", str(out), "-m", str(DEMO), "--no-progress"]) == 1
    df = read_predictions(out)
    assert df["row_number_per_file"].tolist() == list(range(8))
    failed = df[df["preds"].isna()]["row_number_per_file"].tolist()
    assert failed == [2, 3, 5, 6]
    errors = pd.read_csv(tmp_path / "predictions.errors.csv")
    by_row = dict(zip(errors["row_number_per_file"], errors["error"], strict=True))
    assert "damaged or truncated" in by_row[2] or "cannot read image" in by_row[2]
    assert by_row[3].startswith(f"line {row3 + 1}: not UTF-8 text (byte 0xff")
    assert "exceeds the limit of 33,554,432 bytes" in by_row[5]
    assert "row has no image value" in by_row[6]
    err = capsys.readouterr().err
    assert "4 scored, 4 failed" in err and "Traceback" not in err


def test_resume_in_azure_layout(tmp_path, rows_of_images):
    folder = notebook_folder(tmp_path / "batch", [d for d, _ in rows_of_images[:14]], LABELS)
    out = tmp_path / "predictions.csv"
    args = ["batch", str(folder), "-o", str(out), "-m", str(DEMO), "--no-progress", "--precision", "fp32"]
    assert main(args) == 0
    full = read_predictions(out)
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:11]))  # stopped after 11 rows
    assert main([*args, "--resume"]) == 0
    resumed = read_predictions(out)
    key = ["file_name", "row_number_per_file"]
    assert sorted(map(tuple, resumed[key].values.tolist())) == sorted(map(tuple, full[key].values.tolist()))
    merged = full.merge(resumed, on=key, suffixes=("", "_resumed"))
    for _, row in merged.iterrows():  # the same answers, whatever batch each row ran in
        assert row["labels"] == row["labels_resumed"]
        assert json.loads(row["preds"]) == pytest.approx(json.loads(row["preds_resumed"]), abs=1e-5)


def peak_rss_mb(*args: str) -> float:
    """Run `clipedge` in a fresh process and return its peak resident memory (VmHWM) in MB."""
    code = (
        "import sys, clipedge.cli as c; rc = c.main(sys.argv[1:]); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
        "print('HWM', hwm, file=sys.stderr); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stderr.split("HWM ")[1].split()[0]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_memory_does_not_grow_with_the_input(tmp_path, big_jpegs):
    """Ten times the rows (80 camera-sized photos, 240 MB of CSV) take no more memory than eight."""
    photos = [p.read_bytes() for p in big_jpegs]
    small = notebook_folder(tmp_path / "small", [photos[i % 4] for i in range(8)], "a, b")
    large = notebook_folder(tmp_path / "large", [photos[i % 4] for i in range(80)], "a, b")
    common = ["-m", str(DEMO), "--no-progress", "--workers", "2"]
    few = peak_rss_mb("batch", str(small), "-o", str(tmp_path / "s.csv"), *common)
    many = peak_rss_mb("batch", str(large), "-o", str(tmp_path / "l.csv"), *common)
    assert len(read_predictions(tmp_path / "l.csv")) == 80
    print(f"peak RSS: 8 rows {few:.0f} MB, 80 rows {many:.0f} MB")
    assert many < few + 150, (few, many)
