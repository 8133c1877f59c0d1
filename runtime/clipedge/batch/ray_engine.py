"""`--engine ray`: Ray Data runs the classifier in an actor pool (one ONNX Runtime session per actor, CPU
or GPU) and writes result files into an output folder; the rows are the local engine's (same schema, same
scoring code). Needs the `ray` extra.

The driver enumerates the inputs (paths, URLs or table rows) exactly as the local engine does; the actors
read the images, so paths must be visible to every node (shared storage) or be URLs. The pool is sized
from the cluster's resources, leaving one CPU for Ray Data's read and write tasks: on a 2-CPU machine a
pool of two one-CPU actors would take every CPU and the read tasks would never run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .local import Summary, prepare_item, result_row, score_prepared
from .sinks import OutputError, read_rows
from .sources import Group, Item

SUFFIX = {"parquet": ".parquet", "jsonl": ".json", "csv": ".csv"}


def check_output_dir(path: str | Path, fmt: str, resume: bool) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: the Ray engine writes a folder of {fmt} files; this is a file")
    if out.exists() and any(out.iterdir()) and not resume:
        raise OutputError(f"{out}: folder exists and is not empty (use --resume to continue it)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise OutputError(f"{out}: not writable")
    return out


def output_rows(out_dir: Path) -> list[dict[str, Any]]:
    """Every row in a Ray output folder."""
    rows: list[dict[str, Any]] = []
    for f in sorted(out_dir.rglob("*")):
        if f.is_file() and f.suffix == ".json":  # Ray writes JSON lines with a .json suffix
            rows += [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
        elif f.is_file() and f.suffix in (".parquet", ".csv"):
            rows += read_rows(f)
    return rows


def pool_size(resources: dict[str, float], gpu: bool) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for a cluster's resources."""
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    if gpu and gpus >= 1:
        return int(gpus), 1.0, 1.0
    per_actor = 1.0 if cpus <= 4 else 2.0
    return max(1, int((cpus - 1) // per_actor)), per_actor, 0.0


class Scorer:
    """A Ray Data actor: one classifier, fed batches of {"id", "image", "labels"} rows."""

    def __init__(
        self,
        bundle: str,
        precision: str,
        provider: str,
        threads: int,
        policy: Any,
        templates: Any,
        batch_size: int,
        thread_pool: str = "shared",  # an actor owns its process
    ):
        from ..classifier import ZeroShotClassifier

        self.clf = ZeroShotClassifier.load(
            bundle,
            precision=precision,
            provider=provider,
            threads=threads,
            decode_policy=policy,
            thread_pool=thread_pool,
        )
        self.templates, self.batch_size = templates, batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        items = [Item(str(i), str(im)) for i, im in zip(batch["id"], batch["image"], strict=True)]
        label_sets = [json.loads(x) for x in batch["labels"]]
        rows: list[dict[str, Any]] = [{}] * len(items)
        for labels in {tuple(x) for x in label_sets}:  # one label set per Azure file, usually one in all
            idx = [k for k, x in enumerate(label_sets) if tuple(x) == labels]
            prepared: list[Any] = []
            for k in idx:
                try:
                    prepared.append(prepare_item(self.clf, items[k]))
                except (ValueError, OSError) as e:
                    prepared.append(e)
            if labels:
                emb = self.clf.label_embeddings(list(labels), self.templates)
                scored = score_prepared(self.clf, [items[k] for k in idx], prepared, emb, self.batch_size)
            else:
                scored = [result_row(items[k], (), None, "no labels in the first row's text") for k in idx]
            for k, row in zip(idx, scored, strict=True):
                rows[k] = row
        out = {key: [r[key] for r in rows] for key in ("id", "image", "top_label", "top_score", "error")}
        out["labels"] = [json.dumps(r["labels"]) for r in rows]
        out["probs"] = [json.dumps(r["probs"]) for r in rows]
        return out


def run_ray(args: Any, clf: Any, groups: list[Group], labels: Any, out: Path) -> Summary:
    import ray

    summary = Summary()
    start = time.perf_counter()
    skip = set()
    if args.resume and out.exists():
        skip = {str(r["id"]) for r in output_rows(out)}
    global_labels = list(labels.labels) if labels is not None else None
    records = []
    for group in groups:
        group_labels = group.labels if group.labels is not None else global_labels
        for item in group.items:
            if item.id in skip:
                summary.skipped += 1
                continue
            records.append({"id": item.id, "image": item.image, "labels": json.dumps(group_labels or [])})
    if not records:
        summary.seconds = time.perf_counter() - start
        return summary
    ray.init(address=args.ray_address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    gpu = args.provider in ("cuda", "tensorrt")
    actors, cpus, gpus = pool_size(ray.cluster_resources(), gpu)
    templates = args.template if args.template else args.templates
    ds = ray.data.from_items(records).map_batches(
        Scorer,
        fn_constructor_kwargs={
            "bundle": str(Path(args.model).resolve()),
            "precision": clf.precision,
            "provider": args.provider,
            "threads": int(cpus),
            "thread_pool": getattr(args, "thread_pool", "shared"),
            "policy": clf.decode_policy,
            "templates": templates,
            "batch_size": args.batch_size,
        },
        batch_size=args.batch_size,
        concurrency=actors,
        num_cpus=cpus,
        num_gpus=gpus,
        batch_format="numpy",
    )
    ds = ds.map_batches(_final_types, fn_kwargs={"fmt": args.format}, batch_format="pandas")
    out.mkdir(parents=True, exist_ok=True)
    writer = {"parquet": ds.write_parquet, "jsonl": ds.write_json, "csv": ds.write_csv}[args.format]
    try:
        writer(str(out))
    except KeyboardInterrupt:
        summary.interrupted = True
    written = [r for r in output_rows(out) if str(r["id"]) not in skip]
    summary.failed = sum(1 for r in written if r.get("error"))
    summary.scored = len(written) - summary.failed
    summary.errors = [f"{r['id']}: {r['error']}" for r in written if r.get("error")][:20]
    summary.seconds = time.perf_counter() - start
    return summary


def _final_types(df, fmt: str):
    """Lists back to lists for Parquet and JSON; CSV keeps them JSON-encoded, like the local CSV output."""
    if fmt != "csv":
        df["labels"] = df["labels"].map(json.loads)
        df["probs"] = df["probs"].map(json.loads)
    return df[["id", "image", "top_label", "top_score", "labels", "probs", "error"]]
