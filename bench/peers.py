"""clipedge against PyTorch and the strongest peer, interleaved: every contender lives in its own process
and all of them are timed in turn, round after round, on the same preprocessed real photos.

    python -m bench.peers --bundle B --checkpoint CKPT [--rounds 5] [--json out.json] [--doc docs/benchmarks.md]

Contenders (image tower; the ones whose packages are missing are listed with the reason):
- pytorch eager fp32: transformers CLIPModel.get_image_features, inference_mode (the baseline);
- openvino + nncf int8: what OpenVINO's users do: `ov.convert_model` of the PyTorch vision tower, then
  `nncf.quantize` (transformer preset) on the 32 calibration photos clipedge ships, compiled for the CPU;
- clipedge default (openvino extra): `ZeroShotClassifier.load(B)` with OpenVINO installed, i.e. OpenVINO
  on the bundle's int8-static;
- clipedge default (core install): ONNX Runtime's dynamic int8, one image at a time (batch-independent);
- clipedge onnxruntime int8, whole batches: the same graph run on whole batches (results move with the
  batch), the reference for what batch independence costs.
Each round times batch 1 (median of `--iters` runs) and batch 32 (median of a few runs) per contender;
the report gives the median over rounds, each contender's ratio to eager, to the best peer and to the
ceiling (the int8 GEMM rate of this CPU, bench.ceiling), and the image cosine to PyTorch fp32 on the
photos (random weights where the model has them: say so).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
CONTENDERS = {
    "pytorch eager fp32": {"kind": "torch"},
    "openvino + nncf int8 (peer)": {"kind": "nncf"},
    "clipedge default, openvino extra": {"kind": "clipedge", "engine": "auto"},
    "clipedge default, core install": {"kind": "clipedge", "engine": "onnxruntime"},
    "clipedge onnxruntime int8, whole batches": {"kind": "clipedge", "engine": "onnxruntime", "whole": True},
}
PEER = "openvino + nncf int8 (peer)"


# -- the worker side: one contender per process, driven over stdin/stdout ------------------------------------
def photo_pixels(bundle: str) -> np.ndarray:
    """The same preprocessed real photos for everyone: 32 = the four photos x 8."""
    import skimage.data
    from clipedge.bundle import load_bundle
    from clipedge.preprocess import preprocess
    from PIL import Image

    spec = load_bundle(bundle, verify=False).manifest.preprocess
    one = [preprocess(Image.fromarray(getattr(skimage.data, n)()), spec) for n in PHOTOS]
    return np.stack(one * 8)


def build(name: str, bundle: str, checkpoint: str, threads: int) -> Any:
    """A function pixels [N,3,H,W] -> embeddings [N,D] (numpy), for one contender."""
    spec = CONTENDERS[name]
    if spec["kind"] == "clipedge":
        from clipedge import ZeroShotClassifier

        clf = ZeroShotClassifier.load(
            bundle,
            provider="cpu",
            engine=spec["engine"],
            threads=threads,
            thread_pool="shared",
            batch_independent=not spec.get("whole"),
        )
        if spec["engine"] == "auto" and clf.encoder.choice.engine != "openvino":
            raise RuntimeError("the openvino extra is not installed (or the bundle has no int8-static)")
        return lambda x: clf.embed(x, len(x)), f"{clf.encoder.choice.engine} {clf.precision}"
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT / "export"))
    from clipedge_export import source as src
    from clipedge_export.towers import VisionTower

    ckpt = src.resolve(checkpoint, None)
    model = src.load_model(ckpt, src.load_config(ckpt)).eval()
    tower = VisionTower(model).eval()
    if spec["kind"] == "torch":

        def run(x):
            with torch.inference_mode():
                return tower(torch.from_numpy(x)).numpy()

        return run, f"torch {torch.__version__}"
    import nncf
    import openvino as ov
    from clipedge.bundle import load_bundle
    from clipedge_export.calibration import calibration_images, vision_inputs

    images, _ = calibration_images()
    calib = vision_inputs(images, load_bundle(bundle, verify=False).manifest.preprocess)
    side = calib[0].shape[-1]
    ov_model = ov.convert_model(tower, example_input=torch.zeros(1, 3, side, side), input=[(-1, 3, side, side)])
    quantized = nncf.quantize(
        ov_model, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib)
    )
    compiled = ov.Core().compile_model(
        quantized, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    )
    request = compiled.create_infer_request()
    return (lambda x: np.array(request.infer([x])[0])), f"openvino {ov.__version__}, nncf {nncf.__version__}"


def serve(name: str, bundle: str, checkpoint: str, threads: int) -> None:
    """The worker: build, say READY with the embeddings of the photos, then time what the driver asks."""
    run, what = build(name, bundle, checkpoint, threads)
    px = photo_pixels(bundle)
    emb = run(px[:4])
    print("READY " + json.dumps({"what": what, "embeddings": np.asarray(emb, dtype=np.float64).tolist()}), flush=True)
    for line in sys.stdin:
        batch, iters = (int(x) for x in line.split())
        x = px[:batch]
        run(x)  # warm the shape
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t0)
        print("TIMES " + json.dumps(times), flush=True)


# -- the driver ---------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, name: str, bundle: str, checkpoint: str, threads: int):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.peers", "--worker", name, "--bundle", bundle, "--checkpoint", checkpoint,
             "--threads", str(threads)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )  # fmt: skip
        self.ready = self._read("READY")

    def _read(self, tag: str) -> Any:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1 :])
        err = self.proc.stderr.read() if self.proc.stderr else ""
        raise RuntimeError((err.strip().splitlines() or [f"exit {self.proc.poll()}"])[-1])

    def time(self, batch: int, iters: int) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{batch} {iters}\n")
        self.proc.stdin.flush()
        return self._read("TIMES")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run(bundle: str, checkpoint: str, threads: int, rounds: int, iters: int, log=print) -> dict[str, Any]:
    workers, skipped = {}, {}
    for name in CONTENDERS:
        log(f"starting {name}")
        try:
            workers[name] = Worker(name, bundle, checkpoint, threads)
        except Exception as e:
            skipped[name] = str(e)
            log(f"  not measured: {e}")
    times: dict[str, dict[int, list[float]]] = {n: {1: [], 32: []} for n in workers}
    for r in range(rounds):
        for name, w in workers.items():  # interleaved: every contender once per round
            times[name][1].append(float(np.median(w.time(1, iters))))
            times[name][32].append(float(np.median(w.time(32, 3))))
        log(f"round {r + 1}/{rounds} done")
    for w in workers.values():
        w.close()
    ref = unit(np.array(workers["pytorch eager fp32"].ready["embeddings"])) if "pytorch eager fp32" in workers else None
    rows = {}
    for name, w in workers.items():
        b1 = float(np.median(times[name][1])) * 1000
        b32 = 32 / float(np.median(times[name][32]))
        cos = float((unit(np.array(w.ready["embeddings"])) * ref).sum(axis=1).min()) if ref is not None else None
        rows[name] = {
            "runs": w.ready["what"],
            "b1_ms": round(b1, 2),
            "b32_img_s": round(b32, 1),
            "b1_ms_rounds": [round(t * 1000, 2) for t in times[name][1]],
            "b32_img_s_rounds": [round(32 / t, 1) for t in times[name][32]],
            "image_cos_to_pytorch_min": None if cos is None else round(cos, 6),
        }
    return {"rows": rows, "skipped": skipped}


def ratios(report: dict[str, Any], ceiling_img_s: float | None) -> None:
    rows = report["rows"]
    eager, peer = rows.get("pytorch eager fp32"), rows.get(PEER)
    for row in rows.values():
        if eager:
            row["b1_x_eager"] = round(eager["b1_ms"] / row["b1_ms"], 2)
            row["b32_x_eager"] = round(row["b32_img_s"] / eager["b32_img_s"], 2)
        if peer:
            row["b1_x_peer"] = round(peer["b1_ms"] / row["b1_ms"], 3)
            row["b32_x_peer"] = round(row["b32_img_s"] / peer["b32_img_s"], 3)
        if ceiling_img_s:
            row["b32_x_ceiling"] = round(row["b32_img_s"] / ceiling_img_s, 2)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = report["rows"]
    out = []

    def add(name: str, value: float | None, goal: float, what: str) -> None:
        out.append(
            {"target": name, "measured": value, "goal": goal, "met": value is not None and value >= goal, "what": what}
        )

    ov, core, whole = (rows.get(k) for k in list(CONTENDERS)[2:5])
    add("default b1 / openvino+nncf >= 0.97", ov and ov.get("b1_x_peer"), 0.97, "clipedge default, openvino extra")
    add("default b32 / openvino+nncf >= 0.97", ov and ov.get("b32_x_peer"), 0.97, "clipedge default, openvino extra")
    cos = ov and ov.get("image_cos_to_pytorch_min")
    add("default image cosine to PyTorch fp32 >= 0.999", cos, 0.999, "real photos")
    if core and whole:
        add("core b32 / whole-batch dynamic int8 >= 0.75", round(core["b32_img_s"] / whole["b32_img_s"], 3), 0.75,
            "batch-independent ONNX Runtime int8")  # fmt: skip
        add("core b1 / whole-batch dynamic int8 >= 0.95", round(whole["b1_ms"] / core["b1_ms"], 3), 0.95,
            "batch-independent ONNX Runtime int8")  # fmt: skip
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Run {report['date']} on {m['cpu']} ({m['cores']} cores), `python -m bench.peers`, "
        f"{report['rounds']} interleaved rounds (medians); {report['model']}. Each contender in its own "
        "process; the same preprocessed photos.",
        "",
        "| contender | runs | b1 ms | b32 img/s | b1 x eager | b32 x eager | b1 x peer | b32 x peer | b32 x ceiling "
        "| image cos to PyTorch (min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["rows"].items():
        cells = [name, r["runs"], r["b1_ms"], r["b32_img_s"], r.get("b1_x_eager", ""), r.get("b32_x_eager", ""),
                 r.get("b1_x_peer", ""), r.get("b32_x_peer", ""), r.get("b32_x_ceiling", ""),
                 r["image_cos_to_pytorch_min"]]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for name, why in report["skipped"].items():
        lines.append(f"\nNot measured: {name} ({why}).")
    if report.get("ceiling"):
        c = report["ceiling"]
        lines.append(
            f"\nCeiling: int8 GEMM {c['int8_gops']:.0f} GOP/s here, {c['gop_per_image']:.2f} GOP per image: at most "
            f"{c['img_s']:.0f} img/s for any exact int8 tower."
        )
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def ceiling(bundle: str, threads: int) -> dict[str, float]:
    from clipedge.bundle import load_bundle

    from .ceiling import matmul_rate, vision_gop_per_image

    arch = load_bundle(bundle, verify=False).manifest.architecture.__dict__
    gops = matmul_rate("int8", 1600, 768, 3072, threads)
    per = vision_gop_per_image(arch)
    return {"int8_gops": gops, "gop_per_image": per, "img_s": gops / per}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument(
        "--checkpoint", required=True, help="the bundle's Hugging Face folder (PyTorch and NNCF start there)"
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=20, help="batch-1 runs per round")
    p.add_argument("--random-weights", action="store_true", help="say so in the report")
    p.add_argument("--json", default=None)
    p.add_argument("--doc", default=None, help="write the Markdown into this file's bench:peers section")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        serve(args.worker, args.bundle, args.checkpoint, args.threads)
        return
    from .report import check_doc, update_doc

    if args.doc:
        check_doc(Path(args.doc), "peers")
    report = run(
        args.bundle, args.checkpoint, args.threads, args.rounds, args.iters, lambda m: print(m, file=sys.stderr)
    )
    report["ceiling"] = ceiling(args.bundle, args.threads)
    ratios(report, report["ceiling"]["img_s"])
    report["targets"] = targets(report)
    report.update(
        date=_dt.date.today().isoformat(),
        rounds=args.rounds,
        model=f"{Path(args.bundle).name}"
        + (" (random weights: timings only, cosines on random weights)" if args.random_weights else ""),
        machine={"cpu": platform.processor() or _cpu_name(), "cores": os.cpu_count()},
    )
    text = markdown(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.doc:
        update_doc(Path(args.doc), "peers", text)


def _cpu_name() -> str:
    from clipedge.benchmark import cpu_model  # here, not at import: the contenders' processes stay lean

    return cpu_model()


if __name__ == "__main__":
    main()
