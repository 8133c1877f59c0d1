"""Batch scoring: every input and output format, Azure's layout, resume, bad images, unwritable output,
and the same rows from the local and the Ray engine."""

import base64
import csv
import json
import shutil
from pathlib import Path

import pytest
from clipedge.batch import read_rows
from clipedge.batch.ray_engine import pool_size
from clipedge.cli import main

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
EXAMPLES = sorted((DEMO / "examples").glob("*.png"))
LABELS = ", ".join(p.stem.replace("_", " ") for p in EXAMPLES)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for p in EXAMPLES:
        shutil.copy(p, root / p.name)
    shutil.copy(EXAMPLES[0], root / "sub" / "copy.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an image, not listed")
    return root


def run(*args):
    return main(["batch", *map(str, args), "-m", str(DEMO), "--no-progress"])


def expected_top(image_id: str) -> str:
    return Path(image_id).stem.replace("_", " ")


def test_folder_to_jsonl_with_a_bad_image(folder, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert run(folder, "--labels", LABELS, "-o", out) == 1  # one row failed, the rest was scored
    rows = {r["id"]: r for r in read_rows(out)}
    assert set(rows) == {p.name for p in EXAMPLES} | {"sub/copy.png", "broken.jpg"}
    assert "not an image" in rows["broken.jpg"]["error"] and rows["broken.jpg"]["probs"] is None
    for p in EXAMPLES:
        r = rows[p.name]
        assert r["error"] is None and r["top_label"] == expected_top(p.name) and abs(sum(r["probs"]) - 1) < 1e-5
        assert r["labels"] == [x.strip() for x in LABELS.split(",")] and r["top_score"] == max(r["probs"])
    err = capsys.readouterr().err
    assert "7 scored, 1 failed" in err and "broken.jpg" in err


@pytest.mark.parametrize("out_name", ["out.csv", "out.parquet", "out.jsonl"])
def test_tables_in_each_format(folder, tmp_path, out_name):
    rows = [
        {"key": "a", "url": "red_circle.png"},  # relative to the table's folder
        {"key": "b", "url": str(folder / "blue_cross.png")},
        {"key": "c", "url": base64.b64encode((folder / "green_star.png").read_bytes()).decode()},
        {"key": "d", "url": ""},
        {"key": "e", "url": "missing.png"},
    ]
    tables = {}
    with open(folder / "t.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["key", "url"])
        w.writeheader()
        w.writerows(rows)
    tables["csv"] = folder / "t.csv"
    (folder / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tables["jsonl"] = folder / "t.jsonl"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), folder / "t.parquet")
    tables["parquet"] = folder / "t.parquet"
    for kind, table in tables.items():
        out = tmp_path / f"{kind}-{out_name}"
        assert run(table, "--image-column", "url", "--id-column", "key", "--labels", LABELS, "-o", out) == 1
        got = {r["id"]: r for r in read_rows(out)}
        assert [got[k]["top_label"] for k in "abc"] == ["red circle", "blue cross", "green star"]
        assert got["c"]["image"].startswith("<base64, ")
        assert got["d"]["error"].endswith(": row has no image value") and table.name in got["d"]["error"]
        assert "missing.png: no such file" in got["e"]["error"]


def test_azure_batch_layout(folder, tmp_path):
    azure = tmp_path / "azure"
    azure.mkdir()
    b64 = {p.stem: base64.b64encode(p.read_bytes()).decode() for p in EXAMPLES}
    with open(azure / "part1.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text"])
        w.writerow([b64["red_circle"], "red circle, blue cross"])
        w.writerow([b64["blue_cross"], ""])
    with open(azure / "part2.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text"])
        w.writerow([b64["green_star"], "green star, yellow triangle, purple circle"])
    with open(azure / "part3.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text"])
        w.writerow([b64["green_star"], " , "])
    out = tmp_path / "native.csv"
    args = ["batch", str(azure), "-o", str(out), "-m", str(DEMO), "--no-progress", "--layout", "native"]
    assert main(args) == 1  # part3 has no labels
    rows = {r["id"]: r for r in read_rows(out)}
    assert (
        rows["part1.csv:0"]["labels"] == ["red circle", "blue cross"]
        and rows["part1.csv:0"]["top_label"] == "red circle"
    )
    assert rows["part1.csv:1"]["top_label"] == "blue cross"
    assert rows["part2.csv:0"]["labels"] == ["green star", "yellow triangle", "purple circle"]
    assert rows["part2.csv:0"]["top_label"] == "green star"
    assert "no labels" in rows["part3.csv:0"]["error"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_interrupt_then_resume_has_no_duplicates_or_gaps(folder, tmp_path, monkeypatch, suffix):
    from clipedge.batch import local

    for i in range(40):  # enough images for several batches
        shutil.copy(EXAMPLES[i % len(EXAMPLES)], folder / f"extra_{i:02d}_{EXAMPLES[i % len(EXAMPLES)].name}")
    clean = tmp_path / f"clean{suffix}"
    assert run(folder, "--labels", LABELS, "-o", clean, "--batch-size", "8") == 1
    calls = {"n": 0}
    real = local.LocalEngine._score

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(local.LocalEngine, "_score", interrupted)
    out = tmp_path / f"out{suffix}"
    assert run(folder, "--labels", LABELS, "-o", out, "--batch-size", "8") == 130
    partial = read_rows(out)  # valid after Ctrl-C
    assert len(partial) == 16
    monkeypatch.setattr(local.LocalEngine, "_score", real)
    assert (
        run(folder, "--labels", LABELS, "-o", out, "--batch-size", "8", "--resume") == 0
    )  # this run's rows all scored
    resumed = read_rows(out)
    ids = [r["id"] for r in resumed]
    assert len(ids) == len(set(ids)) == len(read_rows(clean))
    by_id = {r["id"]: r for r in read_rows(clean)}
    for r in resumed:
        assert r["top_label"] == by_id[r["id"]]["top_label"]


def test_resume_after_a_hard_kill_mid_line(folder, tmp_path):
    out = tmp_path / "out.jsonl"
    assert run(folder, "--labels", LABELS, "-o", out) == 1
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:25])  # a crash in the middle of a line
    assert run(folder, "--labels", LABELS, "-o", out, "--resume") in (0, 1)  # 1 if the bad image was redone
    ids = [r["id"] for r in read_rows(out)]
    assert len(ids) == len(set(ids)) == 8


@pytest.mark.parametrize(
    "output, expected",
    [
        ("nofolder/out.jsonl", "does not exist"),
        ("out.txt", "output must end in"),
        ("existing.jsonl", "exists (use --resume"),
        ("adir.jsonl", "is a folder"),
    ],
)
def test_bad_output_fails_before_any_work(folder, tmp_path, capsys, output, expected):
    (tmp_path / "existing.jsonl").write_text("")
    (tmp_path / "adir.jsonl").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run(folder, "--labels", LABELS, "-o", tmp_path / output) == 2
    assert expected in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_inputs(tmp_path, capsys, folder):
    assert run(tmp_path / "nothing", "--labels", "a", "-o", tmp_path / "o.jsonl") == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "t.csv").write_text("path\nx.png\n")
    assert run(tmp_path / "t.csv", "--labels", "a", "-o", tmp_path / "o.jsonl") == 2
    assert "no column 'image'" in capsys.readouterr().err
    assert run(folder, "-o", tmp_path / "o.jsonl") == 2
    assert "no labels" in capsys.readouterr().err


def test_decoding_lookahead_is_bounded(tiny_bundle):
    """Memory stays flat: the engine never holds more than `lookahead` decoded images."""
    from concurrent.futures import ThreadPoolExecutor

    from clipedge import ZeroShotClassifier
    from clipedge.batch import LocalEngine
    from clipedge.batch.sources import Item

    engine = LocalEngine(ZeroShotClassifier.load(tiny_bundle), batch_size=4, workers=2)
    produced = {"n": 0}

    def items():
        for i in range(200):
            produced["n"] += 1
            yield Item(str(i), str(EXAMPLES[0]))

    with ThreadPoolExecutor(2) as pool:
        for consumed, _ in enumerate(engine._prepared(items(), pool), start=1):
            assert produced["n"] - consumed <= 2 * 4 + 2


def test_pool_sizing_leaves_a_cpu_for_ray_data():
    assert pool_size({"CPU": 2.0}, gpu=False) == (1, 1.0, 0.0)
    assert pool_size({"CPU": 16.0}, gpu=False) == (7, 2.0, 0.0)
    assert pool_size({"CPU": 16.0, "GPU": 2.0}, gpu=True) == (2, 1.0, 1.0)
    assert pool_size({"CPU": 16.0}, gpu=True)[2] == 0.0  # no GPU in the cluster: CPU actors


@pytest.mark.slow
def test_ray_engine_gives_the_local_rows(folder, tmp_path):
    ray = pytest.importorskip("ray")
    local_out = tmp_path / "local.jsonl"
    assert run(folder, "--labels", LABELS, "-o", local_out) == 1
    local_rows = read_rows(local_out)
    try:
        for name in ("ray.parquet", "ray.jsonl"):  # the output format is honoured, as by the local engine
            out = tmp_path / name
            assert run(folder, "--labels", LABELS, "-o", out, "--runner", "ray") == 1
            assert out.is_file()
            ray_rows = read_rows(out)
            assert [r["id"] for r in ray_rows] == [r["id"] for r in local_rows]  # input order kept
            for r, x in zip(local_rows, ray_rows, strict=True):
                assert x["top_label"] == r["top_label"] and x["labels"] == r["labels"] and x["image"] == r["image"]
                assert (x["error"] is None) == (r["error"] is None)
                if r["probs"] is not None:
                    assert x["probs"] == pytest.approx(r["probs"], abs=1e-5)
        # resume: nothing left to do, nothing duplicated
        assert run(folder, "--labels", LABELS, "-o", tmp_path / "ray.parquet", "--runner", "ray", "--resume") == 0
        assert len(read_rows(tmp_path / "ray.parquet")) == 8
    finally:
        ray.shutdown()
