"""Edge packs and multi-label scoring, on the shipped demo bundle, as users run them."""

import base64
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from clipedge import ZeroShotClassifier
from clipedge.bundle import BundleError
from clipedge.calibrate import calibrate, fit_threshold, multi_label_figures
from clipedge.cli import main
from clipedge.label_rules import NoTextTowerError
from clipedge.labels import LabelEmbeddings, LabelError
from clipedge.options import LoadOptions
from clipedge.pack import make_pack
from clipedge.templates import TemplateError
from clipedge_export.shapes import CLASSES, write_image_folder

from .serverproc import ServerProcess

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
EXAMPLES = DEMO / "examples"
LABELS = list(CLASSES[0::2])  # every colour and every shape on both sides


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return make_pack(DEMO, tmp_path_factory.mktemp("p") / "pack", "int8", LABELS)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return write_image_folder(root / "cal", per_class=12, seed=3000), write_image_folder(root / "eval", 30, seed=2000)


@pytest.fixture(scope="module")
def calibrated(shapes, tmp_path_factory):
    cal = calibrate(LoadOptions(str(DEMO), precision="int8", provider="cpu"), shapes[0], LABELS)
    path = tmp_path_factory.mktemp("cal") / "thresholds.npz"
    cal.labels.save(path)
    return path


def test_a_pack_holds_the_vision_tower_and_labels_only(pack):
    names = sorted(p.name for p in pack.iterdir())
    assert names == ["labels.npz", "pack.json", "vision.int8.onnx"]
    meta = json.loads((pack / "pack.json").read_text())
    assert meta["kind"] == "clipedge-pack" and meta["labels"]["count"] == 15
    assert meta["labels"]["text_precision"] == "fp32" and len(meta["source_bundle"]["hash"]) == 64
    assert meta["manifest"]["source"]["id"] == "demo-ckpt" and meta["manifest"]["name"] == "demo"  # no local paths
    full = sum(p.stat().st_size for p in DEMO.iterdir() if p.is_file())
    assert sum(p.stat().st_size for p in pack.iterdir()) < full / 10


def test_a_pack_classifies_like_its_bundle_with_the_same_embeddings(pack):
    clf = ZeroShotClassifier.load(pack)
    assert clf.tokenizer is None and clf.precision == "int8"
    images = sorted(EXAMPLES.glob("*.png"))
    packed = clf.classify(images, None)  # no labels: the pack's own
    full = ZeroShotClassifier.load(DEMO, precision="int8")
    fp32_text = ZeroShotClassifier.load(DEMO, precision="fp32").label_embeddings(LABELS)
    reference = full.classify(images, fp32_text)
    for a, b in zip(packed, reference, strict=True):
        assert a["labels"] == LABELS
        np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-6)
    red = clf.classify([EXAMPLES / "red_circle.png"], "red circle, blue cross")[0]  # a subset: softmax over it
    assert red["labels"] == ["red circle", "blue cross"] and abs(sum(red["probs"]) - 1) < 1e-5
    assert red["probs"][0] > 0.9


def test_what_needs_the_text_tower_is_refused_clearly(pack):
    clf = ZeroShotClassifier.load(pack)
    with pytest.raises(NoTextTowerError, match=r"label 1 is not one of the 15 fixed labels \('red circle'.*edge pack"):
        clf.classify([EXAMPLES / "red_circle.png"], ["red circle", "cat"])
    with pytest.raises(NoTextTowerError, match="edge pack .* text embeddings need the full bundle"):
        clf.embed_texts(["cat"])
    with pytest.raises(TemplateError, match="templates other than the label embeddings' own .* not an edge pack"):
        clf.classify([EXAMPLES / "red_circle.png"], ["red circle"], templates="a drawing of a {}.")
    with pytest.raises(BundleError, match="already an edge pack"):
        make_pack(pack, pack.parent / "again", "int8", LABELS)


def test_a_damaged_pack_is_refused(pack, tmp_path):
    copy = shutil.copytree(pack, tmp_path / "pack")
    data = (copy / "labels.npz").read_bytes()
    (copy / "labels.npz").write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="labels.npz does not match its sha256"):
        ZeroShotClassifier.load(copy)
    (copy / "pack.json").write_text('{"kind": "something-else"}')
    with pytest.raises(BundleError, match="not a clipedge edge pack"):
        ZeroShotClassifier.load(copy)


def test_a_pack_json_cannot_point_outside_the_pack(pack, tmp_path):
    copy = shutil.copytree(pack, tmp_path / "pack")
    (tmp_path / "outside.npz").write_bytes((copy / "labels.npz").read_bytes())
    meta = json.loads((copy / "pack.json").read_text())
    meta["labels"]["file"] = "../outside.npz"
    (copy / "pack.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"a pack's files are labels.npz and vision.int8.onnx"):
        ZeroShotClassifier.load(copy)
    meta["labels"]["file"] = "labels.npz"
    meta["manifest"]["precisions"]["int8"]["vision"]["file"] = "/etc/passwd"
    (copy / "pack.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="a pack's files are"):
        ZeroShotClassifier.load(copy)


def test_a_bundle_manifest_cannot_point_outside_its_folder(tmp_path):
    copy = shutil.copytree(DEMO, tmp_path / "demo", ignore=shutil.ignore_patterns("*.onnx", "examples"))
    text = (copy / "manifest.json").read_text().replace('"tokenizer.json"', '"../tokenizer.json"')
    (copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match="'../tokenizer.json' must be a plain name"):
        ZeroShotClassifier.load(copy)


def test_pack_and_classify_commands(tmp_path, capsys):
    out = tmp_path / "pack"
    assert main(["pack", str(DEMO), "--labels", ", ".join(LABELS), "--precision", "int8", "-o", str(out)]) == 0
    assert main(["classify", str(EXAMPLES / "green_star.png"), "-m", str(out), "--json", "--top-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])[0]["labels"] == ["green star"]
    assert main(["pack", str(DEMO), "--labels", "a", "--precision", "fp16", "-o", str(tmp_path / "x")]) == 2
    assert "no 'fp16' precision" in capsys.readouterr().err
    assert main(["pack", str(DEMO), "--labels", "a", "--precision", "int8", "-o", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["classify", str(EXAMPLES / "green_star.png"), "-m", str(out), "--multi-label"]) == 2
    assert "needs calibrated thresholds" in capsys.readouterr().err
    rows = tmp_path / "rows.jsonl"  # batch over a folder: the pack's labels too
    assert main(["batch", str(EXAMPLES), "-m", str(out), "-o", str(rows)]) == 0
    scored = [json.loads(line) for line in rows.read_text().splitlines()]
    assert len(scored) == 6 and all(len(r["labels"]) == 15 for r in scored)
    assert {r["id"]: r["top_label"] for r in scored}["green_star.png"] == "green star"


def test_the_best_f1_threshold():
    cos = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    t, f1 = fit_threshold(cos, np.array([1, 1, 0, 0, 0]))
    assert 0.7 < t < 0.8 and f1 == 1.0
    t, f1 = fit_threshold(cos, np.array([1, 0, 1, 0, 0]))  # tag 3 images: 2 / (2 + 1 + 0) beats tagging 1
    assert 0.6 < t < 0.7 and f1 == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no positive"):
        fit_threshold(cos, np.zeros(5))


def test_multi_label_on_the_demo_says_none_for_unlabelled_classes(calibrated, shapes):
    """The issue's study, smaller: thresholds from seed 3000 (12 images a class), evaluated on seed 2000."""
    labels = LabelEmbeddings.load(calibrated)
    assert labels.thresholds is not None and labels.calibration["vision_precision"] == "int8"
    clf = ZeroShotClassifier.load(DEMO, precision="int8")
    figures = multi_label_figures(clf, labels, shapes[1])
    assert figures["unlabelled_no_label"] >= 0.90
    assert figures["labelled_top1_multi"] >= figures["labelled_top1_softmax"] - 0.02


def test_multi_label_through_the_cli_and_a_pack(calibrated, shapes, tmp_path, capsys):
    images = [str(EXAMPLES / "purple_circle.png"), str(EXAMPLES / "red_circle.png")]  # purple circle: no label
    args = ["classify", *images, "-m", str(DEMO), "--label-embeddings", str(calibrated), "--multi-label", "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["present"] == [] and rows[1]["present"] == ["red circle"]
    assert len(rows[0]["scores"]) == 15
    out = tmp_path / "pack"
    assert main(["pack", str(DEMO), "--label-embeddings", str(calibrated), "--precision", "int8", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["classify", *images, "-m", str(out), "--multi-label", "--json"]) == 0
    assert [r["present"] for r in json.loads(capsys.readouterr().out)] == [[], ["red circle"]]
    # a pack made without thresholds can be calibrated itself (with its own template)
    plain = make_pack(DEMO, tmp_path / "plain", "int8", "red circle, blue cross")
    assert main(["calibrate", str(shapes[0]), "-m", str(plain), "-o", str(tmp_path / "th.npz"), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["f1"]) == {"red circle", "blue cross"}
    with pytest.raises(LabelError, match="needs calibrated thresholds"):
        ZeroShotClassifier.load(DEMO).classify(images, LABELS, multi_label=True)


def test_the_endpoint_serves_a_pack(calibrated, tmp_path):
    out = make_pack(DEMO, tmp_path / "pack", "int8", label_embeddings=LabelEmbeddings.load(calibrated))
    image = base64.b64encode((EXAMPLES / "red_circle.png").read_bytes()).decode()

    def score(s, labels):
        body = {"input_data": {"columns": ["image", "text"], "index": [0], "data": [[image, labels]]}}
        return httpx.post(s.url + "/score", json=body, timeout=30)

    with ServerProcess(out) as s:
        ok = score(s, "red circle, blue cross")
        assert ok.status_code == 200 and ok.json()[0]["labels"] == ["red circle", "blue cross"]
        bad = score(s, "red circle, cat")
        assert bad.status_code == 400 and "label 1 is not one of the 15 fixed labels" in bad.json()["message"]
        assert str(tmp_path) not in bad.text and "cat" not in bad.text  # no server paths, no request text
        text = httpx.post(s.url + "/embed/text", json={"texts": ["cat"]}, timeout=30)
        assert text.status_code == 400 and "edge pack" in text.json()["message"]


def test_the_endpoint_answers_multi_label_with_label_embeddings(calibrated):
    png = (EXAMPLES / "purple_circle.png").read_bytes(), (EXAMPLES / "red_circle.png").read_bytes()
    files = [("files", ("purple_circle.png", png[0], "image/png")), ("files", ("red_circle.png", png[1], "image/png"))]
    with ServerProcess(DEMO, "--label-embeddings", str(calibrated)) as s:
        r = httpx.post(s.url + "/classify", data={"multi_label": "true"}, files=files, timeout=30)
        assert r.status_code == 200, r.text
        assert [row["present"] for row in r.json()] == [[], ["red circle"]] and len(r.json()[0]["scores"]) == 15
        subset = {"multi_label": "true", "labels": "red circle, blue cross"}
        r = httpx.post(s.url + "/classify", data=subset, files=files, timeout=30)
        assert [row["labels"] for row in r.json()] == [["red circle", "blue cross"]] * 2
        outside = httpx.post(s.url + "/classify", data={**subset, "labels": "cat"}, files=files, timeout=30)
        assert outside.status_code == 400 and "label 0 is not one of the 15 fixed labels" in outside.json()["message"]
        other = {**subset, "template": "a drawing of a {}"}  # a template error, not a label error
        r = httpx.post(s.url + "/classify", data=other, files=files, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_template", r.text
        # single-label requests still embed any label with the text tower
        r = httpx.post(s.url + "/classify", data={"labels": "purple circle, cat"}, files=files, timeout=30)
        assert r.status_code == 200 and r.json()[0]["labels"] == ["purple circle", "cat"]
        assert r.json()[0]["probs"][0] > 0.5


def test_a_server_template_other_than_the_fixed_labels_stops_it_at_start(calibrated, tmp_path):
    """--label-embeddings (or a pack) made with one template, --template another: the server exits at start
    with the label rule's message, as `classify` refuses the same pair (tests/test_label_rules.py)."""
    pack = make_pack(DEMO, tmp_path / "pack", "int8", LABELS)
    for model, extra in ((DEMO, ["--label-embeddings", str(calibrated)]), (pack, [])):
        proc = ServerProcess(model, *extra, "--template", "a drawing of a {}")
        with pytest.raises(RuntimeError, match="templates other than the label embeddings' own"):
            proc.wait_ready()  # the server exits at start with the reason
        proc.stop()


def test_thresholds_of_another_precision_warn_at_every_load(calibrated, tmp_path, caplog):
    """Thresholds fitted with the int8 image tower, packed with the fp32 one: said each time the pack loads,
    as the same file with the full bundle is."""
    out = make_pack(DEMO, tmp_path / "pack", "fp32", label_embeddings=str(calibrated))
    for model, extra in ((out, {}), (DEMO, {"label_embeddings": str(calibrated)})):
        for _ in range(2):
            caplog.clear()
            with caplog.at_level("WARNING", logger="clipedge"):
                ZeroShotClassifier.load(model, "fp32", "cpu", **extra)
            assert "thresholds were calibrated with the int8 image tower; the image tower runs in fp32" in caplog.text


def test_calibrate_refuses_thresholds_below_the_floors(shapes, tmp_path, capsys):
    """A class folder holding another class's images: its label is told apart from nothing, so no file is
    written (exit 2, the label named with its figures) unless --force; every label's precision, recall and F1
    are reported."""
    root = tmp_path / "cal"
    shutil.copytree(shapes[0], root)
    shutil.rmtree(root / "red circle")
    shutil.copytree(shapes[0] / "blue cross", root / "red circle")  # wrong images in the class folder
    out = tmp_path / "th.npz"
    args = ["calibrate", str(root), "-m", str(DEMO), "--precision", "int8", "--labels", "red circle, green star",
            "-o", str(out)]  # fmt: skip
    assert main(args) == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "label 'red circle': its " in err and "not written: 1 label(s) below the floors" in err
    assert "green star" not in err.split("not written")[0]  # the sound label is not blamed
    assert main([*args, "--force", "--json"]) == 0 and out.exists()
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "warning: label 'red circle'" in captured.err and len(report["problems"]) == 1
    fits = report["labels"]
    assert set(fits) == {"red circle", "green star"} and fits["green star"]["f1"] == 1.0
    assert fits["green star"]["precision"] == 1.0 and fits["green star"]["recall"] == 1.0


def test_eval_runs_on_a_pack_with_its_own_template(tmp_path, capsys):
    """docs/edge.md says packs work in eval: the pack's template is the default, its labels the classes."""
    out = make_pack(DEMO, tmp_path / "pack", "int8", "red circle, green star", templates="a photo of a {}.")
    data = tmp_path / "data"
    for name in ("red_circle", "green_star"):
        (data / name).mkdir(parents=True)
        (data / name / "a.png").write_bytes((EXAMPLES / f"{name}.png").read_bytes())
    assert main(["eval", str(data), "-m", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["top1_accuracy"] == {"int8": 1.0}
