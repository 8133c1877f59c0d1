"""Batch scoring of folders and tables of images into result files, locally or on Ray. Names load on first
use: `clipedge.batch.config` (BatchJob) loads no model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:
    from .config import BatchJob, JobError
    from .job import prepare_job, run_job
    from .local import LocalEngine, Summary
    from .sinks import AzureWriter, OutputError, Writer, check_output, done_ids, open_writer, read_rows
    from .sources import InputError, open_input

_WHERE = {
    "AzureWriter": ".sinks",
    "BatchJob": ".config",
    "InputError": ".sources",
    "JobError": ".config",
    "LocalEngine": ".local",
    "OutputError": ".sinks",
    "Summary": ".local",
    "Writer": ".sinks",
    "check_output": ".sinks",
    "done_ids": ".sinks",
    "open_input": ".sources",
    "open_writer": ".sinks",
    "prepare_job": ".job",
    "read_rows": ".sinks",
    "run_job": ".job",
}
__all__ = [
    "AzureWriter",
    "BatchJob",
    "InputError",
    "JobError",
    "LocalEngine",
    "OutputError",
    "Summary",
    "Writer",
    "check_output",
    "done_ids",
    "open_input",
    "open_writer",
    "prepare_job",
    "read_rows",
    "run_job",
]

__getattr__ = lazy_attributes(__name__, _WHERE)
