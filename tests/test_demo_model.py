"""The shipped demo bundle (models/demo): size, accuracy on a generated held-out set, the README's main job."""

from pathlib import Path

import pytest
from clipedge.bundle import load_bundle
from clipedge.cli import main

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"


def test_bundle_is_small_and_valid():
    bundle = load_bundle(DEMO)  # every file checked against its sha256
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= 30 * 1024 * 1024
    assert {"fp32", "int8"} <= set(bundle.manifest.precisions)
    assert bundle.manifest.tokenizer.context_length == 77 and bundle.manifest.architecture.vocab_size == 49408


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    from clipedge_export.shapes import CLASSES, write_image_folder

    root = write_image_folder(tmp_path_factory.mktemp("heldout"), per_class=20, seed=1000)
    assert len(CLASSES) >= 20
    return root


def test_accuracy_targets_on_heldout_set(heldout):
    from clipedge.evaluate import evaluate

    report = evaluate(DEMO, heldout)
    acc, agree = report.accuracy, report.agreement_with_fp32
    assert report.images == 600 and not report.failed
    assert acc["fp32"] >= 0.95
    assert acc["int8"] >= acc["fp32"] - 0.01 and agree["int8"] >= 0.99
    if "fp16" in acc:
        assert agree["fp16"] >= 0.99


def test_eval_command_meets_the_same_floor(heldout, capsys):
    import json

    assert main(["eval", str(heldout), "-m", str(DEMO), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 600 and not out["failed"]
    assert out["top1_accuracy"]["fp32"] >= 0.95 and out["top1_agreement_with_fp32"]["int8"] >= 0.99


def test_readme_main_job_classifies_the_examples(tmp_path, capsys):
    import json

    examples = sorted((DEMO / "examples").glob("*.png"))
    assert len(examples) >= 4
    labels = [p.stem.replace("_", " ") for p in examples]
    code = main(
        ["classify", *map(str, examples), "-m", str(DEMO), "--labels", ", ".join(labels), "--json", "--top-k", "1"]
    )
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["labels"][0] for r in rows] == labels
    png = tmp_path / "demo.png"
    assert (
        main(["classify", *map(str, examples), "-m", str(DEMO), "--labels", ", ".join(labels), "--plot", str(png)]) == 0
    )
    assert png.stat().st_size > 10_000
