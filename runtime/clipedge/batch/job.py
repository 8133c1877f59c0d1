"""The one function that carries a batch run (`clipedge.batch.config.BatchJob`) out, `run_job`: check the
output, open the input, load the classifier, resolve the labels (through its one door), run the local or the
Ray engine, and write through the layout's writer. The CLI only parses its arguments into a BatchJob."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..classifier import ZeroShotClassifier
from ..decoders import Deadline
from ..label_rules import NoLabelsError
from ..labels import LabelEmbeddings
from ..templates import resolve_templates
from .config import BatchJob, JobError
from .local import LocalEngine, Summary, progress_bar
from .sinks import check_output, done_ids, open_writer, output_labels
from .sources import InputError, count_items, open_input


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
    clf: ZeroShotClassifier
    labels: LabelEmbeddings | None  # None: Azure files with labels of their own, and no labels for the others
    no_labels: str  # why a file without labels of its own is not scored (when `labels` is None)
    skip: set[str]


def prepare_job(job: BatchJob) -> Prepared:
    """Everything that can fail before the first image: output, input, model, labels, resume state.

    Raises:
        InputError, OutputError, BundleError, ProviderError, ModelLoadError, LabelError, LabelFileError,
        TemplateError, NoBundleError: each with a one-line message.
    """
    if job.labels.templates is not None:
        resolve_templates(job.labels.templates)  # a bad template is refused before any work
    groups = open_input(job.input, job.image_column, job.id_column)
    azure = bool(groups) and all(g.azure for g in groups)
    layout = job.layout or ("azure" if azure else "native")
    if layout == "azure" and not azure:
        raise InputError(f"{job.input}: --layout azure needs Azure's batch input (a folder of CSVs with image, text)")
    out = check_output(job.output, job.resume, layout)
    check_extras(job, out)
    skip = done_ids(out, layout) if job.resume else set()
    clf = ZeroShotClassifier.load(job.load)
    labels: LabelEmbeddings | None = None
    no_labels = ""
    try:
        labels = clf.labels(job.labels)
    except NoLabelsError as e:
        if not azure:
            raise
        no_labels = str(e)  # Azure's files bring their labels; a file without them gets error rows saying so
    if job.resume and layout == "native" and labels is not None:
        before = output_labels(out)
        if before is not None and before != list(labels.labels):
            raise JobError(
                f"{out}: its rows were scored against other labels ({len(before)}: {', '.join(before[:5])}...); "
                "resume with the same labels, or write a new output"
            )
    return Prepared(out, layout, groups, clf, labels, no_labels, skip)


def run_job(job: BatchJob, prepared: Prepared | None = None) -> tuple[Summary, Path]:
    """Carry out a job (prepared by `prepare_job` when not given). Returns the summary and the output."""
    p = prepared or prepare_job(job)
    total = count_items(job.input)
    bar = progress_bar(None if total is None else max(0, total - len(p.skip)), job.progress)
    writer = open_writer(p.out, p.layout)
    try:
        if job.runner == "ray":
            from .ray_engine import run_ray

            summary = run_ray(job, p, writer, bar.update if bar else None)
        else:
            deadline = Deadline(base_s=job.decode_timeout)
            engine = LocalEngine(p.clf, batch_size=job.batch_size, workers=job.workers, deadline=deadline)
            summary = engine.run(
                p.groups, job.labels, p.labels, p.no_labels, writer, p.skip, bar.update if bar else None
            )
    finally:
        writer.close()
        if bar:
            bar.close()
    return summary, p.out
