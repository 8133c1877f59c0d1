"""The benchmark harness (`python -m bench`): a real, short run on the tiny model, and its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import headline, markdown, update_doc
from bench.suite import Model, plan

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bundle, tiny_checkpoint):
    out = tmp_path_factory.mktemp("bench")
    readme = out / "README.md"
    readme.write_text("# x\n<!-- bench:cpu:start -->\nOLD-SECTION\n<!-- bench:cpu:end -->\nafter\n")
    cmd = [
        sys.executable, "-m", "bench", "--bundle", str(tiny_bundle), "--checkpoint", str(tiny_checkpoint),
        "--demo", "--batches", "1,4", "--iters", "3", "--min-seconds", "0", "--heldout-per-class", "2",
        "--providers", "cpu,cuda,openvino", "--pools", "shared,session-spin", "--cache", str(out / "cache"),
        "--out", str(out / "run"), "--doc", str(readme),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "run" / "report.json").read_text()), readme


@pytest.mark.slow
def test_every_variant_measured_or_explained(tiny_run, tiny_bundle):
    _, report, _ = tiny_run
    tiny = [v for v in report["variants"] if v["model"] == tiny_bundle.name]
    eager = [v for v in tiny if v["engine"] == "pytorch-eager"]
    assert len(eager) == 1 and not eager[0]["skipped"]
    timed = {(v["provider"], v["precision"], v["pool"]) for v in tiny if not v["skipped"]}
    assert {("cpu", "fp32", "shared"), ("cpu", "int8", "shared"), ("cpu", "int8", "session-spin")} <= timed
    for v in tiny:
        if v["skipped"]:  # every variant that did not run says why
            assert v["provider"] in ("cuda", "openvino") or (v["provider"], v["precision"]) == ("cpu", "fp16")
            continue
        res = v["result"]
        assert [r["batch"] for r in res["rows"]] == [1, 4]
        for r in res["rows"]:
            assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["runs"] >= 3
            assert r["img_per_s"] == pytest.approx(r["batch"] * 1000 / r["p50_ms"], rel=0.01)
            if v["engine"] == "onnxruntime":  # ratio to the eager baseline of the same run
                base = next(b for b in eager[0]["result"]["rows"] if b["batch"] == r["batch"])
                assert r["speedup_vs_eager"] == pytest.approx(base["p50_ms"] / r["p50_ms"], rel=0.01)
        assert res["peak_rss_mb"] > 50 and res["text"]["ms_per_label_32"] > 0
        cold = res["cold"]
        assert cold["process_start_to_result_s"] > cold["in_process_s"] > 0 and cold["peak_rss_mb"] > 50


@pytest.mark.slow
def test_fidelity_machine_and_outputs(tiny_run, tiny_bundle):
    out, report, readme = tiny_run
    demo = report["fidelity"]["demo"]["cpu"]
    assert demo["images"] == 60 and demo["top1_agreement_with_fp32"]["int8"] >= 0.9
    assert 0.99 < demo["image_cosine_to_fp32"]["int8"]["min"] <= 1.0
    assert demo["top1_accuracy"]["fp32"] >= 0.9  # trained demo model on its held-out set
    m = report["machine"]
    assert m["versions"]["onnxruntime"] and "CPUExecutionProvider" in m["onnxruntime_providers"]
    assert report["models"][tiny_bundle.name]["precisions"]["int8"]["bytes"] > 0
    for name in ("report.md", "throughput.png", "latency.png"):
        assert (out / "run" / name).stat().st_size > 1000
    text = readme.read_text()
    assert "OLD-SECTION" not in text and text.endswith("after\n") and "| ort cpu int8 | " in text
    assert "run/throughput.png" in text  # plot paths relative to the README


def test_plan_skips_with_reasons(tiny_bundle):
    m = Model("tiny", tiny_bundle, None)
    variants = plan([m], ["cpu", "cuda"], ["fp32", "int8", "fp16"], [1, 2], ["shared"])
    eager = [v for v in variants if v.engine == "pytorch-eager"]
    assert len(eager) == 2 and all("no Hugging Face checkpoint" in v.skipped for v in eager)
    cpu = [v for v in variants if v.provider == "cpu" and v.engine == "onnxruntime"]
    timed = [(v.precision, v.threads) for v in cpu if not v.skipped]
    assert timed == [("fp32", 1), ("fp32", 2), ("int8", 1), ("int8", 2)]
    assert all("fast kernels" in v.skipped for v in cpu if v.precision == "fp16")
    assert all(v.skipped for v in variants if v.provider == "cuda")  # no CUDA here: each says why


def test_targets_table_judges_vitb32_only():
    arch = {"vision_width": 768, "vision_layers": 12, "patch_size": 32}

    def rows(p50):
        return [{"batch": 1, "p50_ms": p50, "p95_ms": p50, "p99_ms": p50, "img_per_s": 1000 / p50}]

    variant = {"model": "b", "provider": "cpu", "threads": 2, "pool": "shared", "skipped": ""}
    eager = {"engine": "pytorch-eager", "precision": "fp32", "label": "eager", "result": {"rows": rows(60)}}
    int8 = {
        "engine": "onnxruntime",
        "precision": "int8",
        "label": "ort cpu int8",
        "result": {
            "rows": [rows(10)[0] | {"speedup_vs_eager": 6.0}],
            "cold": {"process_start_to_result_s": 1.5, "peak_rss_mb": 300},
        },
    }
    report = {
        "date": "2026-11-27",
        "machine": {"cpu": "x", "cpus": 2},
        "options": {"batches": [1], "iters": 3, "min_seconds": 0},
        "models": {"b": {"architecture": arch, "precisions": {}}},
        "variants": [variant | eager, variant | int8],
        "fidelity": {},
    }
    h = headline(report, "b", "b")
    assert h["latency_b1_x_eager"] == 6.0 and h["int8_cold_start_s"] == 1.5
    text = markdown(report)
    assert "| latency_b1_x_eager >= 5 | 6 (ort cpu int8, 2 threads) | yes |" in text
    assert "| int8_cold_start_s <= 1 | 1.5 | **no** |" in text
    report["models"]["b"]["architecture"] = {"vision_width": 64}
    assert "| target |" not in markdown(report)  # targets are for the ViT-B/32 architecture


def test_update_doc_needs_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="bench:gpu:start"):
        update_doc(readme, "gpu", "x\n")


def test_ceiling_counts_and_profiles(tiny_bundle):
    from bench.ceiling import matmul_rate, profile, vision_gop_per_image

    vitb32 = {"vision_width": 768, "vision_layers": 12, "patch_size": 32, "image_size": 224, "embed_dim": 512}
    assert vision_gop_per_image(vitb32) == pytest.approx(8.82, abs=0.01)  # the known ViT-B/32 figure
    assert matmul_rate("int8", 64, 64, 256, threads=1, seconds=0.1) > 0.01
    from clipedge.bundle import load_bundle

    side = load_bundle(tiny_bundle, verify=False).manifest.architecture.image_size
    ops = profile(tiny_bundle / "vision.int8.onnx", batch=2, side=side, threads=1, runs=2)
    assert any("MatMul" in op for op in ops) and all(ms >= 0 for ms in ops.values())


def test_worker_failure_names_the_problem(tmp_path):
    from bench.suite import run_worker

    with pytest.raises(RuntimeError, match="nope"):
        run_worker(["time", "--bundle", str(tmp_path / "nope"), "--batches", "1"], timeout=120)


def test_bad_arguments_fail_before_any_work(tmp_path):
    for args, message in (
        (["--providers", "cpu,tpu"], "unknown provider tpu"),
        (["--pools", "huge"], "unknown thread pool huge"),
        (["--bundle", "x", "--checkpoint", "a", "--checkpoint", "b"], "more --checkpoint than --bundle"),
        (["--bundle", str(tmp_path / "nope")], "nope"),
        (["--demo", "--readme", str(tmp_path / "NOREADME.md")], "NOREADME.md: cannot read"),
        (["--demo", "--readme", str(ROOT / "pyproject.toml")], "bench:cpu:start"),
    ):
        cmd = [sys.executable, "-m", "bench", *args, "--cache", str(tmp_path / "cache")]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr
        assert not (tmp_path / "cache").exists()  # nothing built
