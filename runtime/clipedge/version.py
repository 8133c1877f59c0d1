"""The package version, on the ground floor (the endpoint reports it; `clipedge.__version__` re-exports it)."""

__version__ = "0.1.0"
