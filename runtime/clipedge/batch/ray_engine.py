"""`--runner ray`: Ray Data reads the input and runs the classifier in an actor pool (one ONNX Runtime
session per actor, CPU or GPU); the rows stream back to the driver, which writes them with the same
writers as the local engine (same formats, layouts and resume). Needs the `ray` extra.

Reading happens in Ray read tasks, one per Azure CSV file (one for any other input), so the driver never
holds the images: it lists the input and receives result rows, whose size does not depend on the images.
Paths must be visible to every node (shared storage) or be URLs. Rows keep the input's order. The pool is
sized from the cluster's resources, leaving one CPU for Ray Data's read tasks: on a 2-CPU machine a pool
of two one-CPU actors would take every CPU and the read tasks would never run.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

from ..label_rules import LabelRequest
from ..labels import LabelEmbeddings
from ..options import LoadOptions
from .local import Summary, group_labels, prepare_or_error, score_items
from .sources import Item, open_input

READ_BLOCK = 64  # rows per block a read task yields


def pool_size(resources: dict[str, float], gpu: bool) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for a cluster's resources."""
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    if gpu and gpus >= 1:
        return int(gpus), 1.0, 1.0
    per_actor = 1.0 if cpus <= 4 else 2.0
    return max(1, int((cpus - 1) // per_actor)), per_actor, 0.0


def _read_group(source: str, image_column: str, id_column: str | None, index: int, skip: frozenset[str]):
    """A read task: the rows of one group, in blocks (runs on a Ray worker)."""
    import pyarrow as pa

    group = open_input(source, image_column, id_column, check_ids=False)[index]
    labels = json.dumps(group.file_labels()) if group.azure else ""
    problem = (group.labels_problem or "") if group.azure else ""
    block: list[dict[str, Any]] = []
    for item in group.items:
        if item.id in skip:
            continue
        block.append(
            {
                "id": item.id,
                "image": item.image,
                "group": item.group,
                "row": item.row,
                "error": item.error or "",  # a string column: Arrow would turn all-None into NaN
                "labels": labels,
                "labels_problem": problem,
            }
        )
        if len(block) == READ_BLOCK:
            yield pa.Table.from_pylist(block)
            block = []
    if block:
        yield pa.Table.from_pylist(block)


def _datasource(source: str, image_column: str, id_column: str | None, groups: int, skip: frozenset[str]):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class InputSource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, **_: Any) -> list[ReadTask]:  # type: ignore[override]  # Ray adds keywords between versions: taken, ignored
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            return [
                ReadTask(functools.partial(_read_group, source, image_column, id_column, i, skip), meta)
                for i in range(groups)
            ]

    return InputSource()


class Scorer:
    """A Ray Data actor: one classifier, fed blocks of rows from `_read_group`."""

    def __init__(
        self,
        options: LoadOptions,
        request: LabelRequest,
        fallback: LabelEmbeddings | None,
        no_labels: str,
        batch_size: int,
    ):
        from ..classifier import ZeroShotClassifier

        self.clf = ZeroShotClassifier.load(options)
        self.request, self.fallback, self.no_labels, self.batch_size = request, fallback, no_labels, batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        n = len(batch["id"])
        items = [_item(batch, k) for k in range(n)]
        rows: list[dict[str, Any]] = [{}] * n
        for labels_json in dict.fromkeys(batch["labels"]):  # one label set per Azure file, usually one in all
            idx = [k for k in range(n) if batch["labels"][k] == labels_json]
            names = json.loads(labels_json) if labels_json else []
            first = idx[0]
            label_emb = group_labels(
                self.clf, self.request, names, self.fallback, self.no_labels, str(batch["group"][first]),
                str(batch["labels_problem"][first]) or None,
            )  # fmt: skip
            if isinstance(label_emb, str):
                scored = [_no_labels_row(items[k], label_emb) for k in idx]
            else:
                prepared = [prepare_or_error(self.clf, items[k]) for k in idx]
                scored = score_items(self.clf, [items[k] for k in idx], prepared, label_emb, self.request.multi_label)
            for k, row in zip(idx, scored, strict=True):
                rows[k] = row
        return {key: [json.dumps(r[key]) if key in ("labels", "probs") else r.get(key) for r in rows] for key in OUT}


def _item(batch: dict[str, Any], k: int) -> Item:
    error = batch["error"][k]
    return Item(
        str(batch["id"][k]),
        str(batch["image"][k]),
        str(batch["group"][k]),
        int(batch["row"][k]),
        error if isinstance(error, str) and error else None,
    )


OUT = ("id", "image", "group", "row", "top_label", "top_score", "labels", "probs", "error", "group_error")


def _no_labels_row(item: Item, message: str) -> dict[str, Any]:
    from .local import result_row

    return result_row(item, {"labels": [], "probs": None, "error": message}, group_error=True)


def run_ray(job: Any, prepared: Any, writer: Any, progress: Any = None) -> Summary:
    """Run a BatchJob on Ray (a local cluster unless `job.ray_address` or RAY_ADDRESS names one), with what
    `prepare_job` checked (its classifier's precision, its labels)."""
    import ray

    clf, skip = prepared.clf, prepared.skip

    summary = Summary()
    start = time.perf_counter()
    groups = open_input(job.input, job.image_column, job.id_column, check_ids=False)
    for g in groups:
        if g.error:  # read tasks yield nothing for it; the driver reports it
            summary.file_error(g.error)
    ray.init(address=job.ray_address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    gpu = job.load.provider in ("cuda", "tensorrt")
    actors, cpus, gpus = pool_size(ray.cluster_resources(), gpu)
    source = str(Path(job.input).resolve())
    options = job.load.resolved()
    options = options.replace(bundle=str(Path(str(options.bundle)).resolve()), precision=clf.precision,
                              threads=int(cpus))  # fmt: skip
    ds = ray.data.read_datasource(_datasource(source, job.image_column, job.id_column, len(groups), frozenset(skip)))
    ds = ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"options": options, "request": job.labels, "fallback": prepared.labels,
                               "no_labels": prepared.no_labels, "batch_size": job.batch_size},
        batch_size=job.batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus,
        batch_format="numpy",
    )  # fmt: skip
    try:
        for batch in ds.iter_batches(batch_size=job.batch_size, batch_format="pandas"):
            rows = [_decoded(r) for r in batch.to_dict("records")]
            writer.write(rows)
            summary.count(rows)
            if progress:
                progress(len(rows))
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.skipped = len(skip)
    summary.seconds = time.perf_counter() - start
    return summary


def _decoded(r: dict[str, Any]) -> dict[str, Any]:
    out = dict(r)
    out["labels"], out["probs"] = json.loads(r["labels"]), json.loads(r["probs"])
    for key in ("top_label", "error"):
        if out.get(key) != out.get(key) or out.get(key) is None:  # NaN from pandas
            out[key] = None
    if out.get("top_score") != out.get("top_score"):
        out["top_score"] = None
    out["row"] = int(out["row"])
    out["group"] = out["group"] or ""
    return out
