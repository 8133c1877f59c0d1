"""Batch jobs and the CLI with broken inputs and unlucky invocations: one bad file never kills a job or
loses others' rows, and every problem is one line naming it."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clipedge import ZeroShotClassifier
from clipedge.batch import read_rows
from clipedge.batch.sources import count_items
from clipedge.cli import main
from clipedge.labels import LabelFileError
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
EXAMPLES = sorted((DEMO / "examples").glob("*.png"))
LABELS = ", ".join(p.stem.replace("_", " ") for p in EXAMPLES)


def truncated_gif(keep: int = 200) -> bytes:
    """An animated GIF cut short. At 200 bytes its first frame is whole: counting its frames raised
    IndexError in Pillow, which used to kill the whole job; at 100 bytes the first frame is cut too."""
    frames = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(5)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()[:keep]


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for p in EXAMPLES:
        shutil.copy(p, root / p.name)
    (root / "animated.gif").write_bytes(truncated_gif(200))
    (root / "cut.gif").write_bytes(truncated_gif(100))
    return root


def run(*args):
    return main(["batch", *map(str, args), "-m", str(DEMO), "--no-progress"])


def test_truncated_gifs_and_resume(folder, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert run(folder, "--labels", LABELS, "-o", out) == 1
    rows = {r["id"]: r for r in read_rows(out)}
    assert len(rows) == 8 and rows["animated.gif"]["error"] is None  # the first frame is whole: it is scored
    assert "cut.gif: image data is damaged or truncated (OSError" in rows["cut.gif"]["error"]
    assert all(rows[p.name]["error"] is None for p in EXAMPLES)
    assert "Traceback" not in capsys.readouterr().err
    assert run(folder, "--labels", LABELS, "-o", out, "--resume") == 0  # nothing left: it does not stop there
    assert "0 scored, 0 failed, 8 skipped" in capsys.readouterr().err
    code = main(
        ["classify", str(folder / "cut.gif"), str(folder / "animated.gif"), "-m", str(DEMO), "--labels", LABELS]
    )
    captured = capsys.readouterr()
    assert code == 1 and "cut.gif: image data is damaged or truncated" in captured.err
    assert "Traceback" not in captured.err and "animated.gif" in captured.out


def test_any_exception_is_that_items_error_row(folder, tmp_path, monkeypatch, capsys):
    from clipedge.decoders import DecoderPool

    real = DecoderPool.submit

    def flaky(self, sources, *args, **kwargs):
        if str(sources[0]).endswith("green_star.png"):
            raise RuntimeError("a decoder bug nobody foresaw")
        return real(self, sources, *args, **kwargs)

    monkeypatch.setattr(DecoderPool, "submit", flaky)
    out = tmp_path / "out.jsonl"
    assert run(folder, "--labels", LABELS, "-o", out) == 1
    rows = {r["id"]: r for r in read_rows(out)}
    assert rows["green_star.png"]["error"] == (
        "green_star.png: cannot prepare image (RuntimeError: a decoder bug nobody foresaw)"
    )
    assert sum(r["error"] is None for r in rows.values()) == 6  # all but it and cut.gif
    assert "Traceback" not in capsys.readouterr().err


def test_rows_that_are_not_utf8_or_json_are_their_own_errors(folder, tmp_path):
    b64 = base64.b64encode(EXAMPLES[0].read_bytes()).decode()
    table = tmp_path / "t.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "image", "note"])
        for i in range(6):
            w.writerow([f"k{i}", b64, "ok"])
    data = table.read_bytes().split(b"\n")
    data[4] = data[4].replace(b"ok", b"caf\xe9")  # Latin-1 inside one row, deep in the file
    table.write_bytes(b"\n".join(data))
    out = tmp_path / "o.csv"
    assert run(table, "--labels", LABELS, "--id-column", "key", "-o", out) == 1
    rows = read_rows(out)
    assert len(rows) == 6 and [r["error"] is not None for r in rows] == [False, False, False, True, False, False]
    assert rows[3]["error"].startswith("t.csv line 5: not UTF-8 text (byte 0xe9")

    jsonl = tmp_path / "t.jsonl"
    lines = [json.dumps({"image": str(p)}) for p in EXAMPLES[:3]]
    jsonl.write_text("\n".join([lines[0], '{"image": "x.png",', lines[1], "[1, 2]", lines[2]]) + "\n")
    out = tmp_path / "j.jsonl"
    assert run(jsonl, "--labels", LABELS, "-o", out) == 1
    rows = read_rows(out)
    assert [r["error"] is None for r in rows] == [True, False, True, False, True]
    assert (
        rows[1]["error"]
        == "t.jsonl line 2: not valid JSON (Expecting property name enclosed in double quotes at column 19)"
    )
    assert rows[3]["error"] == "t.jsonl line 4: not a JSON object"


def test_a_header_that_cannot_be_read_is_refused_up_front(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_bytes(b"im\xffage,key\nx.png,1\n")
    assert run(table, "--labels", "a, b", "-o", tmp_path / "o.jsonl") == 2
    assert "t.csv: cannot read the header (line 1: not UTF-8 text" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_duplicate_ids_are_refused_up_front(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("key,image\na,x.png\nb,y.png\na,z.png\n")
    assert run(table, "--labels", "a, b", "--id-column", "key", "-o", tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert "id 'a' in column 'key' appears twice (line 2 and line 4)" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_resume_on_a_corrupt_output_is_one_line(folder, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "red_circle.png"}\nthis is not json\n{"id": "x"}\n')
    assert run(folder, "--labels", LABELS, "-o", out, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"clipedge: error: {out}: line 2 is not a clipedge result row; cannot resume this output"]


def test_progress_total_counts_csv_rows_not_lines(tmp_path):
    wrapped = base64.encodebytes(EXAMPLES[0].read_bytes()).decode()  # many lines per cell
    table = tmp_path / "t.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image"])
        for _ in range(7):
            w.writerow([wrapped])
    assert wrapped.count("\n") > 5 and count_items(table) == 7


def test_eval_goes_on_past_a_bad_image(tmp_path, capsys):
    data = tmp_path / "ds"
    for p in EXAMPLES[:3]:
        (data / p.stem).mkdir(parents=True)
        shutil.copy(p, data / p.stem / "a.png")
    (data / EXAMPLES[0].stem / "broken.gif").write_bytes(truncated_gif(100))
    (data / EXAMPLES[1].stem / "tiny.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert main(["eval", str(data), "-m", str(DEMO), "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["images"] == 5 and len(report["failed"]) == 2 and report["top1_accuracy"]["fp32"] == 1.0
    assert "broken.gif" in captured.err and "Traceback" not in captured.err


def test_classify_table_shows_every_label_and_survives_a_closed_pipe(tmp_path):
    cmd = [sys.executable, "-m", "clipedge.cli", "classify", *map(str, EXAMPLES), "-m", str(DEMO), "--labels", LABELS]
    full = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert full.returncode == 0
    first = full.stdout.split("\n\n")[0] if "\n\n" in full.stdout else full.stdout
    assert sum(1 for line in first.splitlines() if line.startswith("  ")) >= 6 * 6  # 6 labels, shown for each
    top = subprocess.run([*cmd, "--top-k", "2"], capture_output=True, text=True, cwd=ROOT)
    assert sum(1 for line in top.stdout.splitlines() if line.startswith("  ")) == 6 * 2
    piped = subprocess.run(
        " ".join(f"'{c}'" for c in cmd) + " | head -n 1", shell=True, capture_output=True, text=True, cwd=ROOT
    )
    assert piped.stdout.strip() and "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr


def test_label_embeddings_from_another_bundle_are_refused(tiny_bundle, tmp_path, caplog):
    other = ZeroShotClassifier.load(tiny_bundle, "fp32", "cpu")
    demo = ZeroShotClassifier.load(DEMO, "int8", "cpu")
    foreign = other.label_embeddings(["red circle", "blue cross"])
    with pytest.raises(LabelFileError, match="computed with another bundle"):
        demo.classify([EXAMPLES[0]], foreign)
    foreign.save(tmp_path / "other.npz")
    args = ["classify", str(EXAMPLES[0]), "-m", str(DEMO), "--label-embeddings", str(tmp_path / "other.npz")]
    assert main(args) == 2
    fp32_labels = ZeroShotClassifier.load(DEMO, "fp32", "cpu").label_embeddings(["red circle", "blue cross"])
    with caplog.at_level("WARNING", logger="clipedge"):  # fp32 text with the int8 image tower: the default pairing
        res = demo.classify([EXAMPLES[-2]], fp32_labels)
    assert "text tower" not in caplog.text and np.argmax(res[0]["probs"]) == 0
    static = ZeroShotClassifier.load(DEMO, "int8-static", "cpu", engine="onnxruntime")
    with caplog.at_level("WARNING", logger="clipedge"):  # another choice the user made: allowed, said
        res = demo.classify([EXAMPLES[-2]], static.label_embeddings(["red circle", "blue cross"]))
    assert "computed with the int8-static text tower; the image tower runs in int8" in caplog.text


def test_no_model_outside_a_checkout_says_what_to_pass(tmp_path):
    env_cmd = [sys.executable, "-m", "clipedge.cli", "classify", str(EXAMPLES[0]), "--labels", "a, b"]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "no model given: pass -m BUNDLE" in proc.stderr and "clipedge export" in proc.stderr
    assert "models/demo: no such bundle folder" not in proc.stderr
    inside = subprocess.run(env_cmd, capture_output=True, text=True, cwd=ROOT)
    assert inside.returncode == 0  # in a checkout, models/demo is the default


def test_provider_fallback_on_a_build_without_cuda(capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    args = ["classify", str(EXAMPLES[0]), "-m", str(DEMO), "--labels", LABELS, "--provider", "cuda"]
    assert main(args) == 2
    assert "CUDAExecutionProvider is not available" in capsys.readouterr().err
    assert main([*args, "--provider-fallback"]) == 0


@pytest.mark.slow
def test_ray_engine_turns_every_failure_into_a_row(folder, tmp_path):
    pytest.importorskip("ray")
    import ray

    jsonl = tmp_path / "t.jsonl"
    rows = [json.dumps({"image": str(folder / p.name)}) for p in [*EXAMPLES[:2], Path("cut.gif")]]
    jsonl.write_text("\n".join([rows[0], "{broken", rows[1], rows[2]]) + "\n")
    out = tmp_path / "ray.csv"
    try:
        assert run(jsonl, "--labels", LABELS, "-o", out, "--runner", "ray") == 1
    finally:
        ray.shutdown()
    got = read_rows(out)
    assert [r["id"] for r in got] == ["0", "1", "2", "3"]
    assert got[0]["error"] is None and got[2]["error"] is None
    assert got[1]["error"].startswith("t.jsonl line 2: not valid JSON")
    assert "damaged or truncated (OSError" in got[3]["error"]


def test_a_file_name_that_is_not_utf8_is_recorded_not_fatal(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    shutil.copy(EXAMPLES[0], root / "ok.png")
    odd = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name on a UTF-8 system: a lone surrogate in Python
    shutil.copy(EXAMPLES[1], root / odd)
    for name in ("out.jsonl", "out.csv", "out.parquet"):
        assert run(root, "--labels", LABELS, "-o", tmp_path / name) == 0
        rows = {r["id"]: r for r in read_rows(tmp_path / name)}
        assert set(rows) == {"ok.png", "caf\\xe9.png"} and all(r["error"] is None for r in rows.values())
    assert run(root, "--labels", LABELS, "-o", tmp_path / "out.jsonl", "--resume") == 0  # ids match again


def test_outputs_that_cannot_be_written_or_resumed_are_refused_up_front(folder, tmp_path, capsys):
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "missing" / "x.jsonl")
    assert run(folder, "--labels", LABELS, "-o", tmp_path / "dangling.jsonl") == 2
    assert "cannot be written" in capsys.readouterr().err
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my important notes, not results")
    assert run(folder, "--labels", LABELS, "-o", notes, "--resume") == 2
    assert "is not a clipedge output" in capsys.readouterr().err and notes.read_text().startswith("my important")
    table = tmp_path / "mine.csv"
    table.write_text("id,stuff\n1,2\n")
    assert run(folder, "--labels", LABELS, "-o", table, "--resume") == 2
    assert table.read_text() == "id,stuff\n1,2\n"
    out = tmp_path / "out.jsonl"
    assert run(folder, "--labels", "red circle, blue cross", "-o", out) == 1
    assert run(folder, "--labels", "x, y", "-o", out, "--resume") == 2  # other labels: never mixed in one file
    assert "scored against other labels" in capsys.readouterr().err


def test_azure_folder_with_an_empty_file_and_a_latin1_first_row(tmp_path, capsys):
    folder = tmp_path / "az"
    folder.mkdir()
    b64 = base64.encodebytes(EXAMPLES[0].read_bytes()).decode()
    for i, labels in ((0, "red circle, blue cross"), (20, "caf\xe9, blue cross")):
        rows = [f'{i + k},"{b64}",{labels if k == 0 else ""}' for k in range(2)]
        data = ",image,text\n" + "\n".join(rows) + "\n"
        (folder / f"{i}batch_input.csv").write_bytes(data.encode("latin-1"))
    (folder / "10batch_input.csv").write_text("")  # an empty file among them
    out = tmp_path / "out"  # a folder that does not exist yet: created, as Azure's output folder
    assert main(["batch", str(folder), "-o", f"{out}/", "-m", str(DEMO), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "10batch_input.csv: cannot read the header (empty file)" in err
    assert "20batch_input.csv: its first row cannot be read (line 2: not UTF-8 text" in err
    import pandas as pd

    df = pd.read_csv(
        out / "predictions.csv", header=None, names=["row_number_per_file", "preds", "labels", "file_name"]
    )
    assert df["file_name"].tolist() == ["0batch_input.csv"] * 2 + ["20batch_input.csv"] * 2
    assert df["preds"].notna().tolist() == [True, True, False, False]


def test_sigterm_mid_batch_leaves_a_valid_output_to_resume(folder, tmp_path):
    import signal
    import time

    for i in range(600):
        shutil.copy(EXAMPLES[i % len(EXAMPLES)], folder / f"extra_{i:03d}.png")
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "clipedge.cli", "batch", str(folder), "-m", str(DEMO), "--labels", LABELS]
    proc = subprocess.Popen([*cmd, "-o", str(out), "--no-progress", "--batch-size", "4", "--workers", "1"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while (not out.exists() or out.read_text().count("\n") < 8) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # as `kill`, `docker stop` or a pre-empted node send it
    _, err = proc.communicate(timeout=60)
    total = 608
    if proc.returncode == 130:  # stopped mid-way, as Ctrl-C stops it
        assert "interrupted" in err and "run again with --resume" in err and "Traceback" not in err
        assert 8 <= len(read_rows(out)) < total
    else:  # the job finished before the signal arrived
        assert proc.returncode == 1, err
    assert run(folder, "--labels", LABELS, "-o", out, "--resume") in (0, 1)
    ids = [r["id"] for r in read_rows(out)]
    assert len(ids) == len(set(ids)) == total


def test_options_are_checked_when_parsed(capsys):
    for args in (
        ["classify", str(EXAMPLES[0]), "--labels", "a, b", "--top-k", "0"],
        ["classify", str(EXAMPLES[0]), "--labels", "a, b", "--fetch-timeout", "inf"],
        ["classify", str(EXAMPLES[0]), "--labels", "a, b", "--template", "{}{x}"],
        ["classify", str(EXAMPLES[0]), "--labels", "a, b", "--templates", "bogus"],
        ["batch", ".", "-o", "x.jsonl", "--batch-size", "0"],
        ["serve", "--max-batch", "0"],
        ["serve", "--port", "99999"],
        ["serve", "--client-timeout", "-1"],
    ):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "error: argument" in err and "Traceback" not in err, err


def test_url_schemes_and_single_inputs(capsys):
    assert main(["classify", "HTTP://127.0.0.1:9/x.png", "-m", str(DEMO), "--labels", "a, b"]) == 1
    assert "non-public address" in capsys.readouterr().err  # the scheme is case-insensitive
    assert main(["classify", "ftp://example.com/x.png", "-m", str(DEMO), "--labels", "a, b"]) == 1
    assert "URL scheme 'ftp' is not supported (http and https only)" in capsys.readouterr().err
    clf = ZeroShotClassifier.load(DEMO)
    one = clf.classify(str(EXAMPLES[-2]), "red circle, blue cross")  # one image, Azure-style label string
    assert len(one) == 1 and one[0]["labels"] == ["red circle", "blue cross"] and one[0]["probs"][0] > 0.9


def test_resume_an_output_with_thousands_of_labels(folder, tmp_path):
    many = ", ".join(f"label number {i}" for i in range(7000))  # a labels cell far over 131,072 characters
    for name in ("out.csv", "out.jsonl"):
        out = tmp_path / name
        assert run(folder, "--labels", many, "-o", out) == 1
        assert run(folder, "--labels", many, "-o", out, "--resume") == 0
        assert len(read_rows(out)) == 8


def test_a_huge_jsonl_line_is_skipped_without_being_held(tmp_path, monkeypatch):
    from clipedge.batch import sources

    monkeypatch.setattr(sources, "ROW_CAP", 1000)
    table = tmp_path / "t.jsonl"
    table.write_text(json.dumps({"image": "x" * 5000}) + "\n" + json.dumps({"image": str(EXAMPLES[0])}) + "\n")
    rows = list(sources.table_rows(table))
    assert rows[0][1] == "line 1: row exceeds the limit of 1,000 bytes" and rows[1][1]["image"] == str(EXAMPLES[0])


def test_an_image_that_outlasts_its_decode_deadline_is_its_rows_error(folder, tmp_path):
    """The watchdog of batch mode: an image whose decoding runs past its deadline has its process killed and
    replaced, and is its row's error; the other rows are scored (a deadline short enough for a 49-megapixel
    PNG, about 0.3 s to decode, to outlast it; the demo's small images take a few milliseconds)."""
    from clipedge.batch import LocalEngine
    from clipedge.batch.sinks import open_writer
    from clipedge.batch.sources import open_input
    from clipedge.decoders import Deadline
    from clipedge.label_rules import LabelRequest

    side = 7000
    Image.new("1", (side, side), 1).save(folder / "huge.png")
    clf = ZeroShotClassifier.load(DEMO, "int8", "cpu")
    engine = LocalEngine(clf, batch_size=4, workers=2, deadline=Deadline(base_s=0.05, per_megapixel_s=0.0))
    out = tmp_path / "out.jsonl"
    writer = open_writer(out, "native")
    try:
        request = LabelRequest(tuple(LABELS.split(", ")))
        summary = engine.run(open_input(str(folder)), request, clf.labels(request), "", writer, set())
    finally:
        writer.close()
    rows = {r["id"]: r for r in read_rows(out)}
    assert rows["huge.png"]["error"].endswith(
        "decoding did not finish within 0.1 s (its decoder was stopped and replaced)"
    )
    assert all(rows[p.name]["error"] is None for p in EXAMPLES)
    assert summary.scored == len(EXAMPLES) + 1  # and the animated GIF; cut.gif is damaged
