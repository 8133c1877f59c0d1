"""One label door: `classify`, `batch`, `pack` and `serve` give the same answer (the same refusal, or the same
result) to label embeddings with another template, to a subset of fixed labels, and to multi-label scoring
without thresholds. Each entry point is run as users run it: the CLI's `main`, a real server process."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from clipedge import LabelRequest, ZeroShotClassifier
from clipedge.cli import main
from clipedge.label_rules import NEEDS_THRESHOLDS, OTHER_TEMPLATES
from clipedge_export.shapes import CLASSES

from .serverproc import ServerProcess

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
IMAGE = DEMO / "examples" / "red_circle.png"
LABELS = list(CLASSES[0::2])
SUBSET = ["blue cross", "red circle"]  # fixed labels, in another order than the file's
TEMPLATE = "a photo of a {}."
OTHER = "a drawing of a {}"
TEMPLATE_REFUSED = OTHER_TEMPLATES.format(own=repr(TEMPLATE))


@pytest.fixture(scope="module")
def label_file(tmp_path_factory):
    """Label embeddings as `clipedge labels build` writes them (no thresholds)."""
    folder = tmp_path_factory.mktemp("labels")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    out = folder / "labels.npz"
    assert main(["labels", "build", str(folder / "labels.txt"), "-o", str(out), "-m", str(DEMO), "--template",
                 TEMPLATE, "--precision", "fp32"]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def expected(label_file):
    """The Python API's answer for the subset, with the file brought in the request."""
    clf = ZeroShotClassifier.load(DEMO, "int8", "cpu", engine="onnxruntime")
    return clf.classify([IMAGE], LabelRequest(tuple(SUBSET), str(label_file)))[0]["probs"]


def error_of(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("clipedge: error: "), err
    return err[-1].removeprefix("clipedge: error: ")


MODEL = ["-m", str(DEMO), "--precision", "int8", "--engine", "onnxruntime"]


# -- classify --------------------------------------------------------------------------------------------
def test_classify(label_file, expected, capsys):
    args = ["classify", str(IMAGE), *MODEL, "--label-embeddings", str(label_file)]
    assert main([*args, "--template", OTHER]) == 2
    assert error_of(capsys) == TEMPLATE_REFUSED
    assert main([*args, "--labels", ", ".join(SUBSET), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["labels"] == SUBSET
    np.testing.assert_allclose(row["probs"], expected, atol=1e-6)
    assert main([*args, "--multi-label"]) == 2
    assert error_of(capsys) == NEEDS_THRESHOLDS


# -- batch -----------------------------------------------------------------------------------------------
def test_batch(label_file, expected, capsys, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / IMAGE.name).write_bytes(IMAGE.read_bytes())
    args = ["batch", str(folder), *MODEL, "--label-embeddings", str(label_file), "--no-progress"]
    assert main([*args, "-o", str(tmp_path / "a.jsonl"), "--template", OTHER]) == 2
    assert error_of(capsys) == TEMPLATE_REFUSED
    assert main([*args, "-o", str(tmp_path / "b.jsonl"), "--labels", ", ".join(SUBSET)]) == 0
    row = json.loads((tmp_path / "b.jsonl").read_text())
    assert row["labels"] == SUBSET
    np.testing.assert_allclose(row["probs"], expected, atol=1e-6)
    assert main([*args, "-o", str(tmp_path / "c.jsonl"), "--multi-label"]) == 2
    assert error_of(capsys) == NEEDS_THRESHOLDS


# -- pack --------------------------------------------------------------------------------------------------
def test_pack(label_file, expected, capsys, tmp_path):
    args = ["pack", str(DEMO), "--precision", "int8", "--label-embeddings", str(label_file)]
    assert main([*args, "-o", str(tmp_path / "a"), "--template", OTHER]) == 2
    assert error_of(capsys) == TEMPLATE_REFUSED
    assert not (tmp_path / "a").exists()
    assert main([*args, "-o", str(tmp_path / "b"), "--labels", ", ".join(SUBSET)]) == 0
    capsys.readouterr()
    assert main(["classify", str(IMAGE), "-m", str(tmp_path / "b"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["labels"] == SUBSET
    np.testing.assert_allclose(row["probs"], expected, atol=1e-6)
    assert main([*args, "-o", str(tmp_path / "c"), "--multi-label"]) == 2
    assert error_of(capsys) == NEEDS_THRESHOLDS


# -- serve -------------------------------------------------------------------------------------------------
def test_serve(label_file, expected):
    refused = ServerProcess(DEMO, "--label-embeddings", str(label_file), "--template", OTHER, "--precision", "int8")
    with pytest.raises(RuntimeError) as e:
        refused.wait_ready()
    refused.stop()
    assert f"model failed to load: {TEMPLATE_REFUSED}" in str(e.value)
    image = base64.b64encode(IMAGE.read_bytes()).decode()
    body = {"input_data": {"columns": ["image", "text"], "data": [[image, ", ".join(SUBSET)]]}}
    with ServerProcess(DEMO, "--label-embeddings", str(label_file), "--precision", "int8") as s:
        r = httpx.post(s.url + "/score", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()[0]["labels"] == SUBSET
        np.testing.assert_allclose(r.json()[0]["probs"], expected, atol=1e-6)
        files = [("files", (IMAGE.name, IMAGE.read_bytes(), "image/png"))]
        r = httpx.post(s.url + "/classify", data={"multi_label": "true"}, files=files, timeout=30)
        assert r.status_code == 400 and r.json()["message"] == NEEDS_THRESHOLDS
