"""Batch scoring of folders and tables of images into result files, locally or on Ray."""

from .job import BatchJob, prepare_job, run_job
from .local import LocalEngine, Summary
from .sinks import AzureWriter, OutputError, Writer, check_output, done_ids, open_writer, read_rows
from .sources import InputError, open_input

__all__ = [
    "AzureWriter",
    "BatchJob",
    "InputError",
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
