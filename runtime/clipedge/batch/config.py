"""A batch run as data: `BatchJob`, what the CLI parses its arguments into (pure: importing it loads no
model, so the CLI takes its defaults and choices from here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..options import DECODE_TIMEOUT_S, LoadOptions

if TYPE_CHECKING:
    from ..label_rules import LabelRequest

RUNNERS = ("local", "ray")
LAYOUTS = ("azure", "native")


def _request() -> LabelRequest:
    from ..label_rules import LabelRequest  # the labels module loads numpy: not needed to parse arguments

    return LabelRequest()


@dataclass(frozen=True)
class BatchJob:
    input: str
    output: str
    load: LoadOptions = field(default_factory=lambda: LoadOptions(thread_pool="shared"))
    # the labels (names or label embeddings, templates, multi-label); Azure files' own labels replace the names
    labels: LabelRequest = field(default_factory=lambda: _request())
    layout: str | None = None  # "azure" | "native"; None: azure for Azure's input layout, else native
    image_column: str = "image"
    id_column: str | None = None
    resume: bool = False
    batch_size: int = 32
    workers: int | None = None  # threads fetching and waiting for decoding (local engine)
    decode_timeout: float = DECODE_TIMEOUT_S  # seconds an image's decoding may run (plus 0.05 s a megapixel)
    progress: bool | None = None  # None: a bar on a terminal
    runner: str = "local"  # one of RUNNERS
    ray_address: str | None = None


class JobError(ValueError):
    """A job that cannot run as described (a missing extra, labels that do not match a resumed output)."""
