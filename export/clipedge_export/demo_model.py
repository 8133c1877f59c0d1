"""Train the demo CLIP: a small transformers CLIPModel on generated captioned shapes (`clipedge_export.shapes`).

It uses the real CLIP BPE tokenizer and 77-token context, saves a normal Hugging Face checkpoint folder
(config.json, model.safetensors, tokenizer files, preprocessor_config.json), and that folder then goes
through the same `clipedge export` as any checkpoint. Deterministic from the seed; about 12 minutes on
2 CPU cores.

    python -m clipedge_export.demo_model train .work/demo-ckpt
    clipedge export .work/demo-ckpt -o models/demo --precisions fp32,int8
    python -m clipedge_export.demo_model examples models/demo/examples

The loss is CLIP's symmetric contrastive loss with every same-class pair in the batch counted as a
positive (a batch of 256 over 30 classes holds ~8 images of each class; plain CLIP would push them apart).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .random_checkpoint import OPENAI_MEAN, OPENAI_STD, preprocessor_config, text_config, vision_config
from .shapes import CLASSES, COLOURS, SHAPES, Sample, render

IMAGE_SIZE = 64
TEXT_CONFIG = text_config(64, 256, heads=4, layers=3)
VISION_CONFIG = vision_config(128, 512, heads=4, layers=4, image_size=IMAGE_SIZE, patch_size=16)
PROJECTION_DIM = 64


def make_dataset(n: int, seed: int, crop) -> tuple[np.ndarray, np.ndarray, list[Sample]]:
    """n rendered samples -> (uint8 crops [n,64,64,3] after the runtime's resize + crop, class ids, samples
    without their images, for captions)."""
    rng = np.random.default_rng(seed)
    crops = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    classes = np.empty(n, dtype=np.int64)
    samples = []
    for i in range(n):
        s = render(rng)
        crops[i] = crop(s.image)
        classes[i] = CLASSES.index(s.label)
        samples.append(replace(s, image=None))
    return crops, classes, samples


def _features(out):
    """transformers 4 returns a tensor from get_*_features, transformers 5 an output whose pooler is it."""
    return out if hasattr(out, "dim") else out.pooler_output


class Encoding:
    """Crops and captions to the model's inputs: OpenAI-normalised pixels, CLIP token ids (EOS-padded)."""

    def __init__(self, tok):
        import torch

        self.tok = tok
        self.mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)

    def pixels(self, batch: np.ndarray):
        import torch

        return (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std

    def token_ids(self, texts: list[str]):
        import torch

        enc = self.tok.encode_batch(texts)
        length = max(len(e.ids) for e in enc)
        ids = np.full((len(enc), length), 49407, dtype=np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
        return torch.from_numpy(ids)


def _optimizer(model, lr: float, steps: int):
    """AdamW (no decay on embeddings, biases and norms) and its warm-up + cosine schedule."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98)
    )
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return opt, lr_at


def _sample_batch(rng, classes: np.ndarray, by_colour: list, batch_size: int, hard_fraction: float) -> np.ndarray:
    if rng.random() < hard_fraction:
        # a batch of one colour: only shape tells its captions apart (hard negatives; without them the
        # model settles on colour alone and shape stays near chance for hundreds of steps)
        pool = by_colour[int(rng.integers(len(by_colour)))]
        return rng.choice(pool, size=min(batch_size, len(pool)), replace=False)
    return rng.choice(len(classes), size=batch_size, replace=False)


def _contrastive_loss(model, pixel_values, input_ids, batch_classes: np.ndarray):
    """CLIP's symmetric loss with every same-class pair counted as a positive; also returns the scale."""
    import torch
    import torch.nn.functional as F

    img = F.normalize(_features(model.get_image_features(pixel_values=pixel_values)), dim=-1)
    txt = F.normalize(_features(model.get_text_features(input_ids=input_ids)), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100)
    logits = scale * img @ txt.T
    same = torch.from_numpy(batch_classes[:, None] == batch_classes[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    loss = 0.5 * (-(target * F.log_softmax(logits, dim=1)).sum(1).mean())
    return loss + 0.5 * (-(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()), scale


def train(
    out_dir: str | Path,
    seed: int = 0,
    n_images: int = 50000,
    steps: int = 5000,
    batch_size: int = 128,
    lr: float = 1e-3,
    hard_fraction: float = 0.3,
    threads: int = 2,
    log=print,
) -> Path:
    """Train the demo CLIP into `out_dir` (a Hugging Face checkpoint folder); deterministic from `seed`."""
    import torch
    from clipedge.bundle import Preprocess
    from clipedge.preprocess import center_crop, resize_shortest_edge
    from transformers import CLIPConfig, CLIPModel

    from .clip_bpe import write_clip_tokenizer_files
    from .clip_tokenizer import build_clip_tokenizer

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer_files(out)
    tok = build_clip_tokenizer(out / "vocab.json", out / "merges.txt")
    tok.enable_truncation(77)
    pp = Preprocess(
        IMAGE_SIZE, "bicubic", (IMAGE_SIZE, IMAGE_SIZE), True, 1 / 255, tuple(OPENAI_MEAN), tuple(OPENAI_STD)
    )

    def crop(image):
        return center_crop(np.asarray(resize_shortest_edge(image, pp)), IMAGE_SIZE, IMAGE_SIZE)

    crops, classes, samples = make_dataset(n_images, seed, crop)
    val_crops, val_classes, _ = make_dataset(600, seed + 999_983, crop)
    log(f"generated {n_images} training images in {time.perf_counter() - t_start:.0f} s")
    enc = Encoding(tok)
    config = CLIPConfig(text_config=TEXT_CONFIG, vision_config=VISION_CONFIG, projection_dim=PROJECTION_DIM)
    model = CLIPModel(config)
    model.train()
    opt, lr_at = _optimizer(model, lr, steps)
    rng = np.random.default_rng(seed + 1)
    colour_of = classes // len(SHAPES)
    by_colour = [np.flatnonzero(colour_of == c) for c in range(len(COLOURS))]
    for step in range(steps):
        idx = _sample_batch(rng, classes, by_colour, batch_size, hard_fraction)
        batch = crops[idx]
        if rng.random() < 0.5:  # small colour-preserving augmentation: brightness jitter
            batch = np.clip(batch.astype(np.int16) + rng.integers(-12, 13), 0, 255).astype(np.uint8)
        captions = [samples[i].caption(rng) for i in idx]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss, scale = _contrastive_loss(model, enc.pixels(batch), enc.token_ids(captions), classes[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 500 == 0 or step == steps - 1:
            acc = _zero_shot_accuracy(model, enc.pixels(val_crops), val_classes, enc.token_ids)
            log(
                f"step {step:5d}  loss {loss.item():.3f}  scale {scale.item():5.1f}  val top-1 {acc:.3f}  "
                f"{time.perf_counter() - t_start:.0f} s"
            )
            model.train()
    minutes = (time.perf_counter() - t_start) / 60
    _save(model, out, {"seed": seed, "images": n_images, "steps": steps, "batch_size": batch_size}, minutes)
    log(f"trained in {minutes:.1f} min -> {out}")
    return out


def _save(model, out: Path, facts: dict, minutes: float) -> None:
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(IMAGE_SIZE), indent=2))
    (out / "training.json").write_text(json.dumps({**facts, "minutes": round(minutes, 1)}))


def _zero_shot_accuracy(model, pixel_values, classes: np.ndarray, token_ids) -> float:
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.no_grad():
        img = F.normalize(_features(model.get_image_features(pixel_values=pixel_values)), dim=-1)
        ids = token_ids([f"a photo of a {c}." for c in CLASSES])
        txt = F.normalize(_features(model.get_text_features(input_ids=ids)), dim=-1)
    return float(((img @ txt.T).argmax(1).numpy() == classes).mean())


EXAMPLES = ("red circle", "orange square", "yellow triangle", "green star", "blue cross", "purple circle")


def write_examples(out_dir: str | Path, seed: int = 7) -> list[Path]:
    """The README's example images: one generated image per class in EXAMPLES, named after its class."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for label in EXAMPLES:
        colour, shape = label.split(" ")
        path = out / f"{label.replace(' ', '_')}.png"
        render(rng, colour, shape).image.save(path, optimize=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="train the demo CLIP on generated shapes")
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train and save a Hugging Face checkpoint folder")
    t.add_argument("out_dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--images", type=int, default=50000)
    t.add_argument("--steps", type=int, default=5000)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--lr", type=float, default=1e-3)
    e = sub.add_parser("examples", help="write the README's example images")
    e.add_argument("out_dir")
    args = parser.parse_args(argv)
    if args.cmd == "examples":
        for path in write_examples(args.out_dir):
            print(path)
        return
    train(args.out_dir, args.seed, args.images, args.steps, args.batch_size, lr=args.lr, threads=args.threads)


if __name__ == "__main__":
    main()
