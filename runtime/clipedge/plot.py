"""The model card's visualisation: each image beside a horizontal bar chart of its label probabilities.

Needs matplotlib (the `plot` extra); imported only when a plot is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image


def plot_results(
    images: Sequence[Image.Image],
    names: Sequence[str],
    results: Sequence[dict[str, Any]],
    out: str | Path,
    max_labels: int = 10,
) -> Path:
    """Write one row per image (picture | bars, best label on top) to `out` (PNG); returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'clipedge[plot]'") from None
    rows = len(images)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 3.2 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.4]})  # fmt: skip
    for (ax_img, ax_bar), image, name, res in zip(axes, images, names, results, strict=True):
        ax_img.imshow(image)
        ax_img.set_title(name if len(name) <= 40 else "..." + name[-37:], fontsize=9)
        ax_img.axis("off")
        multi = "present" in res  # multi-label: scores judged on their own, present at 0.5 or more
        values = res["scores"] if multi else res["probs"]
        pairs = sorted(zip(res["labels"], values, strict=True), key=lambda lp: -lp[1])[:max_labels]
        labels = [label for label, _ in pairs][::-1]
        probs = [p for _, p in pairs][::-1]
        bars = ax_bar.barh(range(len(labels)), probs, color="#4C72B0")
        for bar, p in zip(bars, probs, strict=True):
            if (multi and p >= 0.5) or (not multi and bar is bars[-1]):
                bar.set_color("#DD8452")
        ax_bar.set_yticks(range(len(labels)), labels, fontsize=9)
        ax_bar.set_xlim(0, 1)
        if multi:
            ax_bar.axvline(0.5, color="grey", linestyle="--", linewidth=1)
            ax_bar.set_xlabel("score (present at 0.5 or more)" if res["present"] else "score: none of these labels")
        else:
            ax_bar.set_xlabel("probability")
        for y, p in enumerate(probs):
            ax_bar.text(min(p + 0.01, 0.9), y, f"{p:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
