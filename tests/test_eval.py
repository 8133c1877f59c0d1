import json

from clipedge.cli import main
from clipedge.evaluate import evaluate, image_folder
from PIL import Image


def _dataset(root):
    for label, color in [("red_thing", (255, 0, 0)), ("blue thing", (0, 0, 255))]:
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40 + i, 30), color).save(folder / f"{i}.png")
    (root / "blue thing" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def test_image_folder_layout(tmp_path):
    classes, paths, targets = image_folder(_dataset(tmp_path / "ds"))
    assert classes == ["blue thing", "red thing"] and len(paths) == 7 and targets.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_evaluate_reports_each_precision_and_agreement(tiny_bundle, tmp_path):
    report = evaluate(tiny_bundle, _dataset(tmp_path / "ds"))
    assert set(report.accuracy) == {"fp32", "int8", "fp16", "int8-static"}
    assert set(report.agreement_with_fp32) == {"int8", "fp16", "int8-static"}
    assert all(0 <= v <= 1 for v in report.accuracy.values())
    assert len(report.failed) == 1 and "broken.jpg" in report.failed[0][0]


def test_eval_cli(tiny_bundle, tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    code = main(["eval", str(ds), "-m", str(tiny_bundle), "--precisions", "fp32,int8", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # one image failed, the rest was scored
    assert (
        out["images"] == 7
        and set(out["top1_accuracy"]) == {"fp32", "int8"}
        and out["failed"][0]["file"].endswith("broken.jpg")
    )
    assert main(["eval", str(tmp_path / "nope"), "-m", str(tiny_bundle)]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
