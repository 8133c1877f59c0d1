"""One measurement in a fresh process, printed as one JSON line; `python -m bench` runs these one at a time.

    python -m bench.worker time --bundle B --precision int8 --provider cpu --threads 2 --batches 1,8,32
    python -m bench.worker time --checkpoint CKPT --threads 2 --batches 1,8,32      # PyTorch eager
    python -m bench.worker cold --bundle B --precision int8 --image IMG             # start to first result

A fresh process per variant keeps peak RSS per variant and stops one variant's allocator or thread pools
from slowing the next. `time`: image-tower latency percentiles and throughput per batch size (warm-up,
then at least --iters runs and --min-seconds), the text tower's cost per new label (labels padded to the
longest, as the runtime does), one image followed by 3 new labels (both towers in turn), session load
time and peak RSS. `cold`: imports, bundle load and one
image classified against a few labels; the parent adds the interpreter start it saw.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

T0 = time.perf_counter()

LABEL_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "grey", "pink")
LABEL_THINGS = ("circle", "square", "triangle", "star", "cross", "dog", "cat", "car", "tree", "house")


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so a
    worker started by a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # macOS: bytes / 1024 is off


def fresh_labels(n: int, round_: int) -> list[str]:
    """n label texts never seen before in this process (so every one goes through the text tower)."""
    words, things = LABEL_WORDS, LABEL_THINGS
    return [f"a photo of a {words[i % len(words)]} {things[(i // 8) % len(things)]} no. {round_}-{i}" for i in range(n)]


def openvino_providers() -> list:
    """Register the OpenVINO plugin EP (package onnxruntime-ep-openvino) and return its CPU device."""
    import onnxruntime as ort
    import onnxruntime_ep_openvino as ov

    name = ov.get_ep_name()
    try:
        ort.register_execution_provider_library(name, ov.get_library_path())
    except Exception as e:  # already registered in this process
        if "already" not in str(e).lower():
            raise
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not devices:
        cpu = next((d.device.vendor for d in ort.get_ep_devices()), "unknown")
        raise RuntimeError(f"the OpenVINO plugin offers no device on this machine (CPU vendor: {cpu})")
    return devices


def ort_session(path: str, provider: str, threads: int | None, pool: str):
    """A session on `provider` (cpu, cuda, tensorrt: clipedge's own path; openvino: the plugin EP)."""
    from clipedge.options import LoadOptions
    from clipedge.providers import create_session
    from clipedge.threads import session_options

    if provider != "openvino":
        return create_session(path, LoadOptions(provider=provider, threads=threads, thread_pool=pool))
    import onnxruntime as ort

    devices = [d for d in openvino_providers() if str(d.device.type).endswith("CPU")]
    so = session_options(threads, pool)
    so.add_provider_for_devices(devices[:1], {"device_type": "CPU"})
    return ort.InferenceSession(path, so)


def time_ort(args) -> dict:
    import numpy as np
    from clipedge.bundle import load_bundle

    from .timing import time_runs

    bundle = load_bundle(args.bundle, verify=False)
    io = bundle.manifest.towers
    t = time.perf_counter()
    vision = ort_session(str(bundle.tower_path(args.precision, "vision")), args.provider, args.threads, args.pool)
    load_s = time.perf_counter() - t
    side = bundle.manifest.architecture.image_size
    rows = []
    for b in args.batches:
        x = np.random.default_rng(b).standard_normal((b, 3, side, side)).astype(np.float32)

        def plain(x=x):
            return vision.run(None, {io["vision"].input: x})

        run = bound_run(vision, io["vision"], x) if args.iobinding else plain
        rows.append({"batch": b, **time_runs(run, args.warmup, args.iters, args.min_seconds)})
    text = ort_session(str(bundle.tower_path(args.precision, "text")), args.provider, args.threads, args.pool)
    from clipedge.labels import embed_label_texts
    from clipedge.tokenizer import ClipTokenizer

    tok = ClipTokenizer(bundle.path / bundle.manifest.tokenizer.file, bundle.manifest.tokenizer)

    def embed_tokens(tokens):
        return text.run(None, {io["text"].input: tokens.ids})[0]

    def embed(labels):
        return embed_label_texts(labels, ["{}"], tok.tokens, embed_tokens)

    one = np.random.default_rng(1).standard_normal((1, 3, side, side)).astype(np.float32)
    rounds = iter(range(1, 10**9))

    def image_and_labels():  # both towers in turn: where thread pools can fight
        vision.run(None, {io["vision"].input: one})
        embed(fresh_labels(3, next(rounds)))

    mixed = time_runs(image_and_labels, args.warmup, args.iters, min(args.min_seconds, 1.0))
    return {
        "providers": vision.get_providers(),
        "session_load_s": round(load_s, 3),
        "rows": rows,
        "text": text_cost(embed, args) | {"image_plus_3_new_labels_p50_ms": mixed["p50_ms"]},
        "peak_rss_mb": peak_rss_mb(),
    }


def bound_run(session, tower_io, x):
    """IO binding on the GPU: input copied to the device once, output left there (what a GPU pipeline does)."""
    import onnxruntime as ort

    binding = session.io_binding()
    binding.bind_ortvalue_input(tower_io.input, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    binding.bind_output(tower_io.output, "cuda")

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def text_cost(embed, args) -> dict:
    """ms per new label: `embed(labels)` on fresh labels, 32 at once and 1 at a time."""
    out = {}
    for n in (32, 1):
        embed(fresh_labels(n, -1))  # warm-up
        times = []
        start = time.perf_counter()
        while len(times) < args.iters or time.perf_counter() - start < min(args.min_seconds, 1.0):
            labels = fresh_labels(n, len(times))
            t0 = time.perf_counter()
            embed(labels)
            times.append((time.perf_counter() - t0) * 1000 / n)
        out[f"ms_per_label_{n}"] = round(float(sorted(times)[len(times) // 2]), 3)
    return out


def time_torch(args) -> dict:
    import numpy as np
    import torch
    from transformers import CLIPModel

    from .timing import time_runs

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.provider == "cuda" else "cpu"
    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t = time.perf_counter()
    model = CLIPModel.from_pretrained(args.checkpoint, attn_implementation=args.attention).eval().to(device, dtype)
    load_s = time.perf_counter() - t
    side = model.config.vision_config.image_size
    rows = []
    for b in args.batches:
        x = torch.from_numpy(np.random.default_rng(b).standard_normal((b, 3, side, side)).astype(np.float32))
        x = x.to(device, dtype)

        def run(x=x):
            with torch.inference_mode():
                model.get_image_features(pixel_values=x)
            sync()

        rows.append({"batch": b, **time_runs(run, args.warmup, args.iters, args.min_seconds)})
    from clipedge.tokenizer import ClipTokenizer

    tok = None
    if args.bundle:  # the bundle's tokenizer gives the same ids CLIPTokenizer does (tested)
        from clipedge.bundle import load_bundle

        bundle = load_bundle(args.bundle, verify=False)
        tok = ClipTokenizer(bundle.path / bundle.manifest.tokenizer.file, bundle.manifest.tokenizer)

    def embed(labels):
        ids = torch.from_numpy(tok.encode(labels))
        mask = (torch.arange(ids.shape[1])[None] <= (ids == tok.spec.eos_id).int().argmax(1)[:, None]).long()
        with torch.inference_mode():
            out = model.get_text_features(input_ids=ids.to(device), attention_mask=mask.to(device))
        sync()
        return out

    return {
        "providers": [f"torch {torch.__version__} eager on {device} ({args.attention} attention)"],
        "session_load_s": round(load_s, 3),
        "rows": rows,
        "text": text_cost(embed, args) if tok else {},
        "peak_rss_mb": peak_rss_mb(),
    }


def cold(args) -> dict:
    """Imports, load, one classification; the times inside this process (the parent adds process start)."""
    t_import = time.perf_counter()
    labels = ["red circle", "blue square", "green star", "a dog", "a cat"]
    if args.checkpoint:
        import torch
        from PIL import Image
        from transformers import CLIPModel, CLIPProcessor

        if args.threads:
            torch.set_num_threads(args.threads)
        imported = time.perf_counter()
        model = CLIPModel.from_pretrained(args.checkpoint, attn_implementation=args.attention).eval()
        processor = CLIPProcessor.from_pretrained(args.checkpoint)
        loaded = time.perf_counter()
        inputs = processor(text=labels, images=Image.open(args.image), return_tensors="pt", padding=True)
        with torch.inference_mode():
            probs = model(**inputs).logits_per_image.softmax(-1)[0].tolist()
    else:
        from clipedge import ZeroShotClassifier

        imported = time.perf_counter()
        clf = ZeroShotClassifier.load(
            args.bundle, args.precision, args.provider, threads=args.threads, thread_pool=args.pool
        )
        loaded = time.perf_counter()
        probs = clf.classify([args.image], labels)[0]["probs"]
    done = time.perf_counter()
    return {
        "import_s": round(imported - t_import, 3),
        "load_s": round(loaded - imported, 3),
        "first_classification_s": round(done - loaded, 3),
        "in_process_s": round(done - T0, 3),
        "top": labels[max(range(len(labels)), key=lambda i: probs[i])],
        "peak_rss_mb": peak_rss_mb(),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["time", "cold"])
    p.add_argument("--bundle")
    p.add_argument("--checkpoint", help="a Hugging Face CLIP folder: PyTorch eager instead of ONNX Runtime")
    p.add_argument("--attention", default="sdpa", help="transformers attn_implementation for PyTorch eager")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--provider", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pool", default="shared", help="ONNX Runtime thread pool: shared, session, session-spin")
    p.add_argument("--iobinding", action="store_true", help="CUDA: input and output bound on the device")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--image")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.what == "cold":
        result = cold(args)
    elif args.checkpoint:
        result = time_torch(args)
    else:
        result = time_ort(args)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
