"""A batch run as data (`BatchJob`) and the one function that carries it out (`run_job`): check the
output, open the input, load the classifier, resolve the labels, run the local or the Ray engine, and
write through the layout's writer. The CLI only parses its arguments into a BatchJob."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..labels import LabelEmbeddings
from ..options import LoadOptions
from ..templates import resolve_templates
from .local import LocalEngine, Summary, progress_bar
from .sinks import check_output, done_ids, open_writer, output_labels
from .sources import InputError, count_items, open_input


@dataclass(frozen=True)
class BatchJob:
    input: str
    output: str
    load: LoadOptions = field(default_factory=lambda: LoadOptions(thread_pool="shared"))
    labels: tuple[str, ...] | None = None  # for inputs without labels of their own (Azure files may have them)
    label_embeddings: str | None = None  # an .npz from `clipedge labels build`, instead of labels
    templates: Any = None  # None, a template with one {}, or "openai-imagenet"
    layout: str | None = None  # "azure" | "native"; None: azure for Azure's input layout, else native
    image_column: str = "image"
    id_column: str | None = None
    resume: bool = False
    batch_size: int = 32
    workers: int | None = None  # decode threads (local engine)
    progress: bool | None = None  # None: a bar on a terminal
    runner: str = "local"  # "local" | "ray"
    ray_address: str | None = None


class JobError(ValueError):
    """A job that cannot run as described (a missing extra, labels that do not match a resumed output)."""


def check_extras(job: BatchJob, out: Path) -> None:
    import importlib.util

    if job.runner == "ray" and importlib.util.find_spec("ray") is None:
        raise JobError("--runner ray needs the ray extra: pip install 'clipedge[ray]'")
    if out.suffix.lower() == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise JobError(f"{out}: Parquet output needs pyarrow: pip install 'clipedge[batch]'")


@dataclass
class Prepared:
    """What `prepare_job` checked and opened before any image is read."""

    out: Path
    layout: str
    groups: list
    clf: Any
    labels: LabelEmbeddings | None
    skip: set[str]


def prepare_job(job: BatchJob) -> Prepared:
    """Everything that can fail before the first image: output, input, model, labels, resume state.

    Raises:
        InputError, OutputError, BundleError, ProviderError, ModelLoadError, LabelError, LabelFileError,
        TemplateError, NoBundleError: each with a one-line message.
    """
    resolve_templates(job.templates)  # a bad template is refused before any work
    groups = open_input(job.input, job.image_column, job.id_column)
    azure = bool(groups) and all(g.azure for g in groups)
    layout = job.layout or ("azure" if azure else "native")
    if layout == "azure" and not azure:
        raise InputError(f"{job.input}: --layout azure needs Azure's batch input (a folder of CSVs with image, text)")
    out = check_output(job.output, job.resume, layout)
    check_extras(job, out)
    skip = done_ids(out, layout) if job.resume else set()
    clf = job.load.load()
    if not azure and not (job.labels or job.label_embeddings or clf.packed_labels is not None):
        raise InputError("no labels: give --labels 'a, b, c', --labels-file or --label-embeddings")
    labels: LabelEmbeddings | None = None
    if job.label_embeddings:
        labels = clf.load_labels(job.label_embeddings)
    elif job.labels:
        labels = clf.labels(list(job.labels), job.templates)
    elif clf.packed_labels is not None and not azure:  # an edge pack: its own labels
        labels = clf.labels(None)
    if job.resume and layout == "native" and labels is not None:
        before = output_labels(out)
        if before is not None and before != list(labels.labels):
            raise JobError(
                f"{out}: its rows were scored against other labels ({len(before)}: {', '.join(before[:5])}...); "
                "resume with the same labels, or write a new output"
            )
    return Prepared(out, layout, groups, clf, labels, skip)


def run_job(job: BatchJob, prepared: Prepared | None = None) -> tuple[Summary, Path]:
    """Carry out a job (prepared by `prepare_job` when not given). Returns the summary and the output."""
    p = prepared or prepare_job(job)
    total = count_items(job.input)
    bar = progress_bar(None if total is None else max(0, total - len(p.skip)), job.progress)
    writer = open_writer(p.out, p.layout)
    try:
        if job.runner == "ray":
            from .ray_engine import run_ray

            summary = run_ray(job, p.clf, p.labels, writer, p.skip, bar.update if bar else None)
        else:
            engine = LocalEngine(p.clf, batch_size=job.batch_size, workers=job.workers)
            summary = engine.run(p.groups, p.labels, job.templates, writer, p.skip, bar.update if bar else None)
    finally:
        writer.close()
        if bar:
            bar.close()
    return summary, p.out
