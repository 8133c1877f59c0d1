"""Batch scoring of folders and tables of images into result files, locally or on Ray."""

from .local import LocalEngine, Summary
from .sinks import OutputError, Writer, check_output, done_ids, read_rows
from .sources import InputError, open_input

__all__ = [
    "InputError",
    "LocalEngine",
    "OutputError",
    "Summary",
    "Writer",
    "check_output",
    "done_ids",
    "open_input",
    "read_rows",
]
