"""The local batch engine: a bounded stream of images through decoding processes into batched inference.

Decoding and preprocessing run a couple of batches ahead of inference in `clipedge.decoders`' processes (the
endpoint's), fed by threads that fetch URLs and wait, so the two overlap; at most `lookahead` images, and at
most `max_pending_bytes` of image strings (base64 cells of several MB each), are held at any time, however
large the input. A decode that runs past its deadline (a hostile image, a hung decoder) has its process killed
and replaced, and is that item's error row. Results are written and flushed batch by batch. Every per-item
failure, whatever the exception, is that item's error row, and the job goes on.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..classifier import ZeroShotClassifier
from ..decoders import Deadline, DecoderPool
from ..fetch import FetchError, fetch_url
from ..images import ImageError, is_url, printable, probe_pixels, safe_url
from ..label_rules import LabelRequest
from ..labels import LabelEmbeddings, LabelError, LabelFileError
from ..templates import TemplateError
from .sources import Group, Item, describe_ref

MAX_PENDING_BYTES = 256 * 1024 * 1024
PIXEL_BUDGET = 100_000_000  # pixels being decoded at once


@dataclass
class Summary:
    scored: int = 0
    failed: int = 0
    skipped: int = 0
    failed_files: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)  # the first few distinct messages, for the log

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0

    def file_error(self, message: str) -> None:
        """A whole input file that could not be read (its rows are unknown)."""
        self.failed_files += 1
        if message not in self.errors:
            self.errors.append(message)

    def count(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            if r["error"]:
                self.failed += 1
                named = r.get("group_error") or r["error"].split(": ", 1)[0].endswith(r["id"])
                message = r["error"] if named else f"{r['id']}: {r['error']}"
                if len(self.errors) < 20 and message not in self.errors:
                    self.errors.append(message)
            else:
                self.scored += 1

    def line(self) -> str:
        state = "interrupted" if self.interrupted else "done"
        files = f", {self.failed_files} file(s) unreadable" if self.failed_files else ""
        return (
            f"{state}: {self.scored} scored, {self.failed} failed{files}, {self.skipped} skipped (already in output) "
            f"in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s)"
        )


def default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def result_row(item: Item, result: dict[str, Any], group_error: bool = False) -> dict[str, Any]:
    """One output row from an item and its `ZeroShotClassifier.format` result (see clipedge.batch.sinks)."""
    row: dict[str, Any] = {
        "id": printable(item.id),
        "image": describe_ref(item.image),
        "labels": list(result["labels"]),
        "group": item.group,
        "row": item.row,
    }
    probs = result.get("scores" if "scores" in result else "probs")  # multi-label: each label's own score
    if probs is None:
        return {
            **row,
            "probs": None,
            "top_label": None,
            "top_score": None,
            "error": printable(str(result["error"])),
            "group_error": group_error,
        }
    best = int(np.argmax(probs))
    return {**row, "probs": probs, "top_label": row["labels"][best], "top_score": float(probs[best]), "error": None}


def group_labels(
    clf: ZeroShotClassifier,
    request: LabelRequest,
    names: list[str],
    fallback: LabelEmbeddings | None,
    no_labels: str,
    group: str,
    problem: str | None = None,
) -> LabelEmbeddings | str:
    """What a group is scored against: an Azure file's own label `names`, under the job's request (its
    templates, label embeddings, multi-label), else the job's labels (`fallback`); or, when it has none or
    the label rules refuse them, the message its rows get. Shared by both engines."""
    if names:
        try:
            return clf.labels(replace(request, names=tuple(names)))
        except (LabelError, LabelFileError, TemplateError) as e:
            return f"{group}: its labels cannot be used ({e}); its rows were not scored"
    if fallback is not None:
        return fallback
    problem = problem or f"{group}: no labels in the first row's text"
    return f"{problem}, and {no_labels}; its rows were not scored"


def prepare_item(clf: ZeroShotClassifier, item: Item, decoders: DecoderPool | None = None) -> np.ndarray:
    """Decode + preprocess one item's image (in `decoders` when given, else in this thread); raises
    ImageError naming it."""
    if item.error:
        raise ImageError(item.error)
    if not item.image:
        raise ImageError("row has no image value")
    if decoders is None:
        return clf.prepare(item.image)
    source: str | bytes = item.image
    name = None
    if is_url(item.image):  # fetched here: waiting, not work (the decoding processes never fetch)
        name = safe_url(item.image)
        try:
            source = fetch_url(item.image.strip(), clf.decode_policy.fetch)
        except FetchError as e:
            raise ImageError(f"{name}: {e}") from None
    [(result, _)] = decoders.submit([source], [name], [probe_pixels(source, allow_paths=True)]).result()
    if isinstance(result, ImageError):
        raise result
    return result


def prepare_or_error(
    clf: ZeroShotClassifier, item: Item, decoders: DecoderPool | None = None
) -> np.ndarray | Exception:
    """`prepare_item`, with any failure returned in place of the pixels (never raised)."""
    try:
        return prepare_item(clf, item, decoders)
    except ImageError as e:
        return e
    except Exception as e:  # whatever it is, it is this item's problem, not the job's
        return ImageError(f"{item.id}: cannot prepare image ({type(e).__name__}: {e})")


def score_items(
    clf: ZeroShotClassifier,
    items: list[Item],
    prepared: list[np.ndarray | Exception],
    labels: LabelEmbeddings,
    multi_label: bool = False,
) -> list[dict[str, Any]]:
    """Result rows for prepared items, through the classifier's stages. Shared by both engines."""
    try:
        results = clf.classify_prepared(prepared, labels, batch_size=len(prepared) or 1, multi_label=multi_label)
    except Exception as e:  # the tower failed on this batch: every row of it says so, the job goes on
        message = f"inference failed ({type(e).__name__}: {str(e)[:200]})"
        results = [clf.format(labels.labels, None, None, message) for _ in items]
    return [result_row(item, res) for item, res in zip(items, results, strict=True)]


class LocalEngine:
    def __init__(
        self,
        clf: ZeroShotClassifier,
        batch_size: int = 32,
        workers: int | None = None,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        deadline: Deadline | None = None,
    ):
        """`workers`: threads that fetch and wait for decoding (default: cores, 2..8); decoding runs in one
        process per core (at most 4), each job under `deadline`."""
        self.clf, self.batch_size = clf, batch_size
        self.workers = workers or default_workers()
        self.max_pending_bytes = max_pending_bytes
        self.deadline = deadline or Deadline()
        self.decoders: DecoderPool | None = None

    def _prepared(self, items: Iterable[Item], pool: ThreadPoolExecutor) -> Iterator[tuple[Item, Future]]:
        lookahead = 2 * self.batch_size + self.workers
        queue: deque[tuple[Item, Future]] = deque()
        pending = 0
        for item in items:
            queue.append((item, pool.submit(prepare_or_error, self.clf, item, self.decoders)))
            pending += len(item.image)
            while queue and (len(queue) >= lookahead or pending > self.max_pending_bytes):
                done = queue.popleft()
                pending -= len(done[0].image)
                yield done
        while queue:
            yield queue.popleft()

    def run(
        self,
        groups: list[Group],
        request: LabelRequest,
        labels: LabelEmbeddings | None,
        no_labels: str,
        writer: Any,
        skip: set[str],
        progress: Callable[[int], None] | None = None,
    ) -> Summary:
        """Score every group: against `labels`, or an Azure file's own labels under `request` (`group_labels`)."""
        summary = Summary()
        start = time.perf_counter()
        self.request, self.fallback, self.no_labels = request, labels, no_labels
        processes = max(1, min(4, os.cpu_count() or 1, self.workers))
        spec = self.clf.bundle.manifest.preprocess
        self.decoders = DecoderPool(
            processes, self.clf.decode_policy, spec, PIXEL_BUDGET, nice=0, deadline=self.deadline
        )
        self.decoders.start()
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="clipedge-decode") as pool:
                for group in groups:
                    self._run_group(group, writer, skip, pool, summary, progress)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            self.decoders.shutdown(grace=0.5)
            self.decoders = None
            summary.seconds = time.perf_counter() - start
        return summary

    def _run_group(self, group, writer, skip, pool, summary, progress) -> None:
        if group.error:
            summary.file_error(group.error)
            return
        items: Iterable[Item] = group.items
        if skip:
            items = self._skipping(items, skip, summary)
        names = group.file_labels() if group.azure else []
        label_emb = group_labels(
            self.clf, self.request, names, self.fallback, self.no_labels, group.name, group.labels_problem
        )
        if isinstance(label_emb, str):  # an Azure file without usable labels, and none for the job
            message = label_emb
            for item in items:
                self._emit(
                    writer, [result_row(item, self.clf.format((), None, None, message), True)], summary, progress
                )
            return
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

    def _score(self, batch, label_emb: LabelEmbeddings, writer: Any, summary: Summary, progress) -> None:
        items = [item for item, _ in batch]
        prepared = [fut.result() for _, fut in batch]
        rows = score_items(self.clf, items, prepared, label_emb, self.request.multi_label)
        self._emit(writer, rows, summary, progress)

    @staticmethod
    def _emit(writer: Any, rows: list[dict[str, Any]], summary: Summary, progress) -> None:
        writer.write(rows)
        summary.count(rows)
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
