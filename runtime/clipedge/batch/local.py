"""The local batch engine: a bounded stream of images through a decode pool into batched inference.

Decoding and preprocessing run in a thread pool a couple of batches ahead of inference (PIL and numpy
release the GIL), so the two overlap; at most `lookahead` images are in memory at any time, however
large the input. Results are written and flushed batch by batch; a bad image becomes an error row.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..classifier import ZeroShotClassifier, format_result
from ..images import ImageError
from ..labels import LabelEmbeddings
from .sinks import Writer
from .sources import Group, Item, describe_ref


@dataclass
class Summary:
    scored: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)  # the first few, for the log

    @property
    def images_per_s(self) -> float:
        return (self.scored + self.failed) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        state = "interrupted" if self.interrupted else "done"
        return (
            f"{state}: {self.scored} scored, {self.failed} failed, {self.skipped} skipped (already in output) "
            f"in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s)"
        )


def default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def result_row(item: Item, labels: tuple[str, ...], probs: np.ndarray | None, error: str | None) -> dict[str, Any]:
    """One output row (the schema of clipedge.batch.sinks)."""
    row: dict[str, Any] = {"id": item.id, "image": describe_ref(item.image), "labels": list(labels)}
    if probs is None:
        return {**row, "probs": None, "top_label": None, "top_score": None, "error": error}
    best = int(np.argmax(probs))
    res = format_result(labels, probs)
    return {**row, "probs": res["probs"], "top_label": labels[best], "top_score": float(probs[best]), "error": None}


def prepare_item(clf: ZeroShotClassifier, item: Item) -> np.ndarray:
    """Decode + preprocess one item's image (raises ImageError naming it)."""
    if not item.image:
        raise ImageError("row has no image value")
    return clf.prepare_image(item.image)


def score_prepared(
    clf: ZeroShotClassifier,
    items: list[Item],
    prepared: list[np.ndarray | Exception],
    label_emb: LabelEmbeddings,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Result rows for items whose images were prepared (an exception in place of a bad one's pixels).
    Shared by the local and the Ray engine, so both write the same rows."""
    good = [i for i, p in enumerate(prepared) if not isinstance(p, Exception)]
    probs = {}
    if good:
        emb = clf.encoder.embed_pixels(np.stack([prepared[i] for i in good]), batch_size=batch_size)  # type: ignore[misc]
        probs = dict(zip(good, clf.scores(emb, label_emb), strict=True))
    return [
        result_row(item, label_emb.labels, probs[i], None)
        if i in probs
        else result_row(item, label_emb.labels, None, str(prepared[i]))
        for i, item in enumerate(items)
    ]


class LocalEngine:
    def __init__(self, clf: ZeroShotClassifier, batch_size: int = 32, workers: int | None = None):
        self.clf, self.batch_size = clf, batch_size
        self.workers = workers or default_workers()

    def _prepared(self, items: Iterable[Item], pool: ThreadPoolExecutor) -> Iterator[tuple[Item, Future]]:
        lookahead = 2 * self.batch_size + self.workers
        queue: deque[tuple[Item, Future]] = deque()
        for item in items:
            queue.append((item, pool.submit(prepare_item, self.clf, item)))
            if len(queue) >= lookahead:
                yield queue.popleft()
        while queue:
            yield queue.popleft()

    def run(
        self,
        groups: list[Group],
        labels: LabelEmbeddings | None,
        templates: Any,
        writer: Writer,
        skip: set[str],
        progress: Callable[[int], None] | None = None,
    ) -> Summary:
        summary = Summary()
        start = time.perf_counter()
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="clipedge-decode") as pool:
                for group in groups:
                    self._run_group(group, labels, templates, writer, skip, pool, summary, progress)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            summary.seconds = time.perf_counter() - start
        return summary

    def _run_group(self, group, labels, templates, writer, skip, pool, summary, progress) -> None:
        items: Iterable[Item] = group.items
        if skip:
            items = self._skipping(items, skip, summary)
        if group.labels is not None:
            if not group.labels:
                for item in items:  # Azure file without labels: every row is an error row
                    self._emit(
                        writer,
                        [result_row(item, (), None, f"{group.name}: no labels in the first row's text")],
                        summary,
                        progress,
                    )
                return
            label_emb = self.clf.label_embeddings(group.labels, templates)
        else:
            assert labels is not None
            label_emb = labels
        batch: list[tuple[Item, Future]] = []
        for pair in self._prepared(items, pool):
            batch.append(pair)
            if len(batch) == self.batch_size:
                self._score(batch, label_emb, writer, summary, progress)
                batch = []
        if batch:
            self._score(batch, label_emb, writer, summary, progress)

    @staticmethod
    def _skipping(items: Iterable[Item], skip: set[str], summary: Summary) -> Iterator[Item]:
        for item in items:
            if item.id in skip:
                summary.skipped += 1
            else:
                yield item

    def _score(self, batch, label_emb: LabelEmbeddings, writer: Writer, summary: Summary, progress) -> None:
        prepared: list[np.ndarray | Exception] = []
        for _, fut in batch:
            try:
                prepared.append(fut.result())
            except (ImageError, ValueError, OSError) as e:
                prepared.append(e)
        rows = score_prepared(self.clf, [item for item, _ in batch], prepared, label_emb, self.batch_size)
        self._emit(writer, rows, summary, progress)

    @staticmethod
    def _emit(writer: Writer, rows: list[dict[str, Any]], summary: Summary, progress) -> None:
        writer.write(rows)
        for r in rows:
            if r["error"]:
                summary.failed += 1
                if len(summary.errors) < 20:
                    summary.errors.append(f"{r['id']}: {r['error']}")
            else:
                summary.scored += 1
        if progress:
            progress(len(rows))


def progress_bar(total: int | None, enabled: bool | None = None):
    """A tqdm bar with images/s and ETA on a terminal; nothing in logs or without tqdm."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.1)
