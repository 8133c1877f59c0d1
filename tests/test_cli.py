import json

import pytest
from clipedge.cli import main
from PIL import Image


@pytest.fixture()
def images(tmp_path):
    paths = []
    for name, color in [("red.png", (255, 0, 0)), ("blue.jpg", (0, 0, 255))]:
        p = tmp_path / name
        Image.new("RGB", (64, 48), color).save(p)
        paths.append(str(p))
    return paths


def test_table_json_and_exit_codes(tiny_bundle, images, tmp_path, capsys):
    assert main(["classify", *images, "-m", str(tiny_bundle), "--labels", "red, blue, green"]) == 0
    out = capsys.readouterr().out
    assert "red.png" in out and "blue.jpg" in out and "green" in out
    missing = str(tmp_path / "nope.png")
    code = main(
        [
            "classify",
            images[0],
            missing,
            "-m",
            str(tiny_bundle),
            "--labels",
            "red, blue",
            "--json",
            "--top-k",
            "1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1  # something failed, the rest was classified
    rows = json.loads(captured.out)
    assert rows[0]["image"].endswith("red.png") and len(rows[0]["labels"]) == 1 and rows[0]["probs"][0] > 0
    assert rows[1]["probs"] is None and "no such file" in rows[1]["error"]
    assert "nope.png: no such file" in captured.err


def test_labels_errors(tiny_bundle, images, tmp_path, capsys):
    assert main(["classify", images[0], "-m", str(tiny_bundle), "--labels", " , ,"]) == 2
    assert "no labels" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    assert main(["classify", images[0], "-m", str(tiny_bundle), "--labels-file", str(empty)]) == 2
    assert "no labels in the file" in capsys.readouterr().err
    assert main(["classify", images[0], "-m", str(tmp_path / "nobundle"), "--labels", "a"]) == 2
    assert "no such bundle folder" in capsys.readouterr().err


def test_labels_build_then_classify(tiny_bundle, images, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n\n# comment\ngreen, light\n")
    out = tmp_path / "labels.npz"
    assert (
        main(
            [
                "labels",
                "build",
                str(labels),
                "-m",
                str(tiny_bundle),
                "--templates",
                "openai-imagenet",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert "3 labels x 80 templates" in capsys.readouterr().out
    assert main(["classify", images[0], "-m", str(tiny_bundle), "--label-embeddings", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(rows[0]["labels"]) == sorted(["red", "blue", "green, light"])


def test_plot(tiny_bundle, images, tmp_path, capsys):
    png = tmp_path / "out.png"
    assert main(["classify", *images, "-m", str(tiny_bundle), "--labels", "red, blue", "--plot", str(png)]) == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.height > 300
