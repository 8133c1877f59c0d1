"""Prompt templates: none (the bare label), one template, or OpenAI's 80-template ImageNet ensemble.

The ensemble is the one of the CLIP paper's ImageNet evaluation (openai/CLIP, notebooks/
Prompt_Engineering_for_ImageNet.ipynb): each label's template embeddings are L2-normalised, averaged,
then normalised again.
"""

from __future__ import annotations

OPENAI_IMAGENET = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.",
    "art of a {}.", "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.",
    "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.",
    "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.",
    "art of the {}.", "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "the plushie {}.", "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.",
    "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)  # fmt: skip

NAMED = {"none": ("{}",), "openai-imagenet": OPENAI_IMAGENET}


def resolve_templates(templates: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """None or "none" -> the bare label; a name in NAMED; one template string with "{}"; or a list of them."""
    if templates is None:
        return NAMED["none"]
    if isinstance(templates, str):
        if templates in NAMED:
            return NAMED[templates]
        templates = [templates]
    out = tuple(templates)
    if not out:
        raise ValueError("empty template list")
    for t in out:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one {{}} for the label")
    return out


def parse_labels(text: str) -> list[str]:
    """Labels as Azure's endpoint reads them: split on commas, stripped, empties dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]
