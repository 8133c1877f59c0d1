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
DEFAULT_TEMPLATE = "a photo of a {}."  # what eval and calibrate use for class names when given none
MAX_TEMPLATE_CHARS = 200


class TemplateError(ValueError):
    """A prompt template that breaks the template rule; the message never repeats the template itself."""


def validate_template(template: object, where: str = "template") -> str:
    """The one template rule (DESIGN.md, Shared rules): text with exactly one `{}` and no other `{` or `}`,
    at most 200 characters. Templates are filled with `str.replace`, never `str.format`.

    Args:
        template: the candidate template.
        where: how error messages name it (e.g. "hypothesis_template").

    Returns:
        The template, unchanged.

    Raises:
        TemplateError: naming `where` and the broken rule (not the template's text).
    """
    if not isinstance(template, str):
        raise TemplateError(f"{where} must be a string")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"{where} has {len(template)} characters; the limit is {MAX_TEMPLATE_CHARS}")
    if template.count("{}") != 1 or template.count("{") != 1 or template.count("}") != 1:
        raise TemplateError(f'{where} must contain exactly one "{{}}" for the label and no other braces')
    if not is_utf8(template):
        raise TemplateError(f"{where} is not valid Unicode text (a lone surrogate?)")
    return template


def is_utf8(text: str) -> bool:
    """False for strings that cannot be encoded as UTF-8 (lone surrogates, which JSON allows)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fill(template: str, label: str) -> str:
    """The prompt for one label: the template's `{}` replaced by the label (no format-string evaluation)."""
    return template.replace("{}", label, 1)


def resolve_templates(templates: str | list[str] | tuple[str, ...] | None, where: str = "template") -> tuple[str, ...]:
    """Templates from a spec: None or "none" gives the bare label; a name in NAMED gives that set; one
    template string or a list of them is checked with `validate_template`.

    Raises:
        TemplateError: an empty list or a template that breaks the rule.
    """
    if templates is None:
        return NAMED["none"]
    if isinstance(templates, str):
        if templates in NAMED:
            return NAMED[templates]
        templates = [templates]
    out = tuple(templates)
    if not out:
        raise TemplateError("empty template list")
    for i, t in enumerate(out):
        validate_template(t, where if len(out) == 1 else f"{where} {i}")
    return out
