"""What a careful attacker or an unlucky user sends, against a real `clipedge serve` and the CLI: errors name
the row in each contract's own shape, labels that cannot be told apart are refused by name, pickled label
files are refused without advice to load them unsafely, too many decoding processes are refused, and the
slash redirect never names another host."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from clipedge import ZeroShotClassifier
from clipedge.cli import main
from clipedge.labels import LabelError, LabelFileError
from clipedge.pack import make_pack

from .serverproc import ServerProcess

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
RED = base64.b64encode((DEMO / "examples" / "red_circle.png").read_bytes()).decode()
LONG = " ".join(["a"] * 80)  # 80 tokens in 159 characters: cut at 77 before what follows


@pytest.fixture(scope="module")
def server():
    with ServerProcess(DEMO) as s:
        yield s


def test_mlflow_and_hugging_face_errors_name_the_row(server):
    records = [{"image": RED, "text": "red circle, blue cross"}, {"text": "x"}]
    r = httpx.post(server.url + "/invocations", json={"dataframe_records": records}, timeout=30)
    assert r.status_code == 400 and set(r.json()) == {"error_code", "message"}
    assert r.json()["message"].startswith("record 1: row has no image")
    split = {"columns": ["image", "text"], "data": [[RED, "red circle, blue cross"], [RED], ["bm90IGFuIGltYWdl"]]}
    r = httpx.post(server.url + "/invocations", json={"dataframe_split": split}, timeout=30)
    assert r.status_code == 400 and r.json()["message"].startswith("row 2: The provided image string cannot be")
    hf = {"inputs": [RED, RED, "bm90IGFuIGltYWdl"], "parameters": {"candidate_labels": ["red circle", "cat"]}}
    r = httpx.post(server.url + "/", json=hf, timeout=30)
    assert r.status_code == 400 and set(r.json()) == {"error"}
    assert r.json()["error"].startswith("inputs[2]: The provided image string cannot be decoded")
    one = {**hf, "inputs": ""}
    r = httpx.post(server.url + "/", json=one, timeout=30)
    assert r.status_code == 400 and r.json()["error"].startswith("inputs: row has no image")


@pytest.mark.parametrize(
    "labels, message",
    [
        (["cat", " cat  "], "labels 0 and 1 are the same label: give each once"),
        (["cat", "dog\x00"], "label 1 holds a control character"),
        (["cat", "\u200b\u200d"], "label 1 has nothing visible"),
        (["Cat", "cat"], "labels 0 and 1 give the same tokens"),
        ([LONG + " red", LONG + " blue"], "labels 0 and 1 give the same tokens"),
    ],
)
def test_labels_that_cannot_be_told_apart_are_refused_naming_both(server, labels, message):
    with pytest.raises(LabelError, match=message):
        ZeroShotClassifier.load(DEMO).classify([DEMO / "examples" / "red_circle.png"], labels)
    body = {"input_data": {"columns": ["image", "text"], "data": [[RED, ", ".join(labels)]]}}
    if "\u200b" not in labels[1] and "\x00" not in labels[1]:  # a comma-joined text cannot carry these as one label
        r = httpx.post(server.url + "/score", json=body, timeout=30)
        assert r.status_code == 400 and message in r.json()["message"], r.text
    hf = {"inputs": RED, "parameters": {"candidate_labels": labels}}
    r = httpx.post(server.url + "/", json=hf, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert "cat" not in r.text.replace("candidate", "")  # positions, never the request's text


def test_the_same_label_rules_in_pack_labels_build_and_calibrate(tmp_path, capsys):
    assert main(["pack", str(DEMO), "--labels", "red circle, red  circle", "--precision", "int8", "-o",
                 str(tmp_path / "p")]) == 2  # fmt: skip
    assert "labels 0 and 1 are the same label" in capsys.readouterr().err
    (tmp_path / "labels.txt").write_text("red circle\nRed Circle\n")
    assert main(["labels", "build", str(tmp_path / "labels.txt"), "-m", str(DEMO), "-o", str(tmp_path / "l.npz")]) == 2
    assert "labels 0 and 1 give the same tokens" in capsys.readouterr().err
    folder = tmp_path / "cal"
    for name in ("red_circle", "Red_circle", "blue_cross"):  # two classes that CLIP's tokenizer cannot tell apart
        (folder / name).mkdir(parents=True)
        (folder / name / "a.png").write_bytes((DEMO / "examples" / "red_circle.png").read_bytes())
    args = [
        "calibrate",
        str(folder),
        "-m",
        str(DEMO),
        "-o",
        str(tmp_path / "t.npz"),
        "--labels",
        "red circle, Red circle",
    ]
    assert main(args) == 2
    assert "give the same tokens" in capsys.readouterr().err
    with pytest.raises(LabelError, match="label 1 holds a comma: Azure's /score and /classify split labels on commas"):
        make_pack(DEMO, tmp_path / "comma", "int8", ["red circle", "circle, red"])
    assert not (tmp_path / "comma").exists()


def test_a_pickled_label_file_is_refused_without_advice_to_load_it(tmp_path, capsys):
    bad = tmp_path / "pickled.npz"
    np.savez(bad, embeddings=np.zeros((1, 64), np.float32), meta=np.array([{"labels": ["x"]}], dtype=object))
    with pytest.raises(LabelFileError, match="holds pickled Python objects, which clipedge never loads"):
        ZeroShotClassifier.load(DEMO).load_labels(bad)
    assert main(["classify", str(DEMO / "examples" / "red_circle.png"), "--label-embeddings", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "never loads" in err and "allow_pickle" not in err


def test_decoding_processes_are_bounded(capsys):
    cores = os.cpu_count() or 1
    assert main(["serve", "-m", str(DEMO), "--decode-workers", str(2 * cores + 1), "--port", "0"]) == 2
    assert f"--decode-workers {2 * cores + 1}: at most {2 * cores} on this machine" in capsys.readouterr().err
    with ServerProcess(DEMO, "--decode-workers", str(cores + 1)) as s:
        assert httpx.get(s.url + "/ready", timeout=10).status_code == 200
        output = s.output()
    assert f"{cores + 1} decoding processes on {cores} cores" in output


def test_the_slash_redirect_never_names_another_host(server):
    r = httpx.get(server.url + "/ui/", headers={"Host": "evil.example"}, timeout=10, follow_redirects=False)
    assert r.status_code == 404 and "evil.example" not in r.headers.get("location", "")
    assert httpx.get(server.url + "/ui", timeout=10).status_code == 200
