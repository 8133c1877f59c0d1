"""The one error the export stage raises for anything a user can fix; the CLI prints it on one line."""


class ExportError(Exception):
    """An export that cannot go on: bad source, bad output folder, or a variant below its parity threshold."""
