"""`clipedge bench`: a real, quick run on the shipped demo bundle through the CLI, and its one-line errors."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
from clipedge.bundle import load_bundle
from clipedge.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
LABELS = "red circle, green star, blue cross"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", "-m", str(DEMO), "--quick", "--batch-sizes", "1,4", "--labels", LABELS]
    args += ["--json", str(out / "r.json"), "--markdown", str(out / "r.md")]
    args += ["--plot", str(out / "r.png")] if HAS_MATPLOTLIB else []
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    return out, json.loads((out / "r.json").read_text()), stdout


def test_every_precision_timed_with_ordered_percentiles(quick_run):
    _, report, _ = quick_run
    have = set(load_bundle(DEMO, verify=False).manifest.precisions)
    rows = report["rows"]
    assert {r["precision"] for r in rows if (r["engine"], r["provider"]) == ("onnxruntime", "cpu")} == have
    for r in rows:
        assert r["labels"] == ["red circle", "green star", "blue cross"]
        assert r["cold_start_s"] > r["first_answer_s"] >= r["load_s"] > 0
        assert 30 < r["rss_first_answer_mb"] <= r["peak_rss_mb"]
        assert r["torch_imported"] is False  # the worker's own sys.modules
        for path in ("classify", "tower"):
            assert [t["batch"] for t in r[path]] == [1, 4]
            for t in r[path]:
                assert 0 < t["p50_ms"] <= t["p95_ms"] <= t["p99_ms"] and t["runs"] >= 3
                assert t["img_per_s"] == pytest.approx(t["batch"] * 1000 / t["p50_ms"], rel=0.01)
    assert sum(r["default"] for r in rows) == 1  # what a plain load picks here
    for s in report["skipped"]:  # what cannot run here says why
        assert s["skipped"]


def test_report_names_machine_versions_and_bundle(quick_run):
    _, report, _ = quick_run
    assert report["machine"]["cpus"] >= 1 and report["machine"]["cpu"]
    assert report["versions"]["onnxruntime"] and report["date"][:4].isdigit()
    assert report["bundle"] == {
        "path": str(DEMO),
        "hash": load_bundle(DEMO, verify=False).bundle_hash,
        "precisions": list(load_bundle(DEMO, verify=False).manifest.precisions),
    }
    assert report["settings"]["images"]["source"] == "generated" and report["torch_imported"] is False


def test_markdown_and_plot_written(quick_run):
    out, report, stdout = quick_run
    text = (out / "r.md").read_text()
    assert text == stdout
    assert "| combination | path | cold start s |" in text and "| onnxruntime cpu int8" in text
    assert text.count("| tower |") == len(report["rows"])
    if HAS_MATPLOTLIB:
        assert (out / "r.png").stat().st_size > 10_000


def test_missing_bundle_is_one_line_and_exit_2(tmp_path):
    code, stdout, stderr = run_cli("bench", "-m", str(tmp_path / "nope"), "--quick")
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("clipedge: error: ") and "nope" in stderr


def test_folder_without_images_is_one_line_and_exit_2(tmp_path):
    code, _, stderr = run_cli("bench", "-m", str(DEMO), "--quick", "--images", str(tmp_path))
    assert code == 2 and stderr.count("\n") == 1 and "no images" in stderr


def test_plot_without_matplotlib_says_so_before_measuring(tmp_path, monkeypatch):
    import clipedge.cli.bench as bench

    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "matplotlib" else real(name, *args)

    monkeypatch.setattr(bench.importlib.util, "find_spec", find_spec)
    code, _, stderr = run_cli("bench", "-m", str(DEMO), "--plot", str(tmp_path / "p.png"))
    assert code == 2 and stderr.strip() == "clipedge: error: --plot needs matplotlib: pip install 'clipedge[plot]'"


def test_bad_batch_sizes_are_a_usage_error():
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()):
        main(["bench", "--batch-sizes", "1,0"])
    assert e.value.code == 2
