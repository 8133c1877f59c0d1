"""Decoding untrusted images: a format allowlist, a pixel cap checked before decoding, first frame only,
EXIF orientation applied, and every mode (CMYK, 16-bit, palette, grey, alpha) turned into 8-bit RGB.

Sources: a path, bytes, a PIL image, a numpy array, base64 (with or without a data: prefix, newlines
allowed as Azure's samples send), or an http(s) URL fetched under the rules of `clipedge.fetch`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .fetch import FetchError, FetchPolicy, fetch_url
from .options import DEFAULT_MAX_PIXELS, LoadOptions

ORIENTATION = 0x0112  # the EXIF tag
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
B64_CHARS = re.compile(r"^[A-Za-z0-9+/=_-]+$")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")

ImageInput = str | bytes | bytearray | memoryview | Path | Image.Image | np.ndarray


class ImageError(ValueError):
    """An input that is not a usable image; the message names the input and the problem."""


@dataclass(frozen=True)
class DecodePolicy:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_pixels: int = DEFAULT_MAX_PIXELS
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    draft: int | None = None  # JPEG: let libjpeg decode at 1/2, 1/4, 1/8 scale down to >= this shortest edge
    allow_paths: bool = True  # False for untrusted input (the HTTP endpoint): strings are base64 or URLs only

    @property
    def redact(self) -> bool:
        """Untrusted input (no file paths): messages never repeat the caller's strings."""
        return not self.allow_paths

    @classmethod
    def from_options(cls, options: LoadOptions, untrusted: bool = False) -> DecodePolicy:
        """The policy load options describe; untrusted callers (the endpoint) get no file paths and redacted
        messages."""
        fetch = FetchPolicy(
            allow_private=options.allow_private_urls,
            allow_link_local=options.allow_link_local_urls,
            timeout=options.fetch_timeout,
            hide_addresses=untrusted,
        )
        return cls(max_pixels=options.max_pixels, fetch=fetch, allow_paths=not untrusted)


URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def printable(text: str) -> str:
    """`text` safe to write anywhere as UTF-8: file names that are not UTF-8 reach Python as lone
    surrogates (os.fsdecode); their bytes are shown as backslash escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_http_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


def is_url(source: object) -> bool:
    """Whether an input is an http(s) URL (fetched, not decoded in place)."""
    return isinstance(source, str) and is_http_url(source.lstrip())


def safe_url(url: str) -> str:
    """scheme://host[:port]/path of a URL: no credentials, query or fragment (DESIGN.md, error bodies)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"[:200]


def describe(source: Any, redact: bool = False) -> str:
    """A short, log-safe name for an input: never the whole base64 string, never a URL's credentials or
    query; with `redact` (untrusted callers) no string of the caller's beyond its length."""
    if isinstance(source, Path):
        return f"<path, {len(str(source))} chars>" if redact else printable(str(source))
    if isinstance(source, str):
        if is_http_url(source.lstrip()):
            return safe_url(source)
        if redact:
            return f"<string, {len(source)} chars>"
        if source.startswith("data:") or len(source) > 200 or "\n" in source:
            return f"<base64 string, {len(source)} chars>"
        return printable(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {source.shape}>"
    return f"<{type(source).__name__}>"


def decode_base64(text: str) -> bytes:
    """Base64 with or without `data:image/...;base64,`, newlines and spaces ignored, url-safe alphabet allowed."""
    s = text.strip()
    if s.startswith("data:"):
        head, _, s = s.partition(",")
        if ";base64" not in head:
            raise ImageError("data: URL is not base64-encoded")
    s = "".join(s.split())
    if not s or not B64_CHARS.match(s):
        raise ImageError("not a valid base64 string")
    s = s.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("not a valid base64 string") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode; transparency is composited on white (as transformers' convert_rgb)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(image).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _open(data: io.BytesIO, policy: DecodePolicy, name: str) -> Image.Image:
    """Read the header only: format allowlist, pixel cap, JPEG draft scale. Pixels are decoded by `decode_image`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(data, formats=list(policy.formats))
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image in an allowed format ({', '.join(policy.formats)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image is too large (decompression bomb guard)") from None
    except Exception as e:  # Pillow raises many types on hostile headers (OSError, SyntaxError, struct.error...)
        raise ImageError(f"{name}: cannot read image ({type(e).__name__}: {e})") from None
    w, h = image.size
    if w * h > policy.max_pixels:
        raise ImageError(f"{name}: {w}x{h} image exceeds the pixel limit of {policy.max_pixels:,}")
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has no pixels")
    if policy.draft and image.format == "JPEG":
        with contextlib.suppress(Exception):
            image.draft("RGB", (policy.draft, policy.draft))
    return image


def decode_image(image: Image.Image, name: str) -> Image.Image:
    """Decode the first frame, apply EXIF orientation, convert to 8-bit RGB. Any failure is an ImageError:
    Pillow raises IndexError, struct.error, EOFError... on damaged files, and none may escape."""
    try:
        image.load()
        if image.getexif().get(ORIENTATION, 1) != 1:  # transposing copies the image: only when needed
            image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image is too large (decompression bomb guard)") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode this image") from None
    except Exception as e:
        raise ImageError(f"{name}: image data is damaged or truncated ({type(e).__name__}: {e})") from None


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: expected an HxW or HxWx3/4 array, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.min() >= 0 and array.max() <= 1:
            array = (array * 255 + 0.5).astype(np.uint8)
        else:
            raise ImageError(f"{name}: expected uint8 values (or floats in [0, 1]), got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def open_image(
    source: ImageInput, policy: DecodePolicy | None = None, name: str | None = None
) -> tuple[Image.Image, str]:
    """Any supported input -> (image, name): an encoded image is opened (header only, caps checked, fetched
    first if it is a URL); `decode_image` then decodes it. `name` replaces the input's description in
    messages (e.g. the URL that fetched bytes came from).

    Raises:
        ImageError: naming the input (redacted for untrusted callers) and the problem.
    """
    policy = policy or DecodePolicy()
    name = name or describe(source, policy.redact)
    if isinstance(source, Image.Image):
        if source.width * source.height > policy.max_pixels:
            raise ImageError(f"{name}: image exceeds the pixel limit of {policy.max_pixels:,}")
        return source, name
    if isinstance(source, np.ndarray):
        return _from_array(source, name), name
    if isinstance(source, bytes | bytearray | memoryview):
        return _open(io.BytesIO(bytes(source)), policy, name), name
    if isinstance(source, Path):
        if not policy.allow_paths:
            raise ImageError(f"{name}: file paths are not accepted here")
        return _open(_read(source, name), policy, name), name
    if not isinstance(source, str):
        raise ImageError(f"{name}: unsupported image input type")
    text = source.strip()
    scheme = URL_SCHEME.match(text)
    if scheme and not is_http_url(text):
        raise ImageError(f"{name}: URL scheme {scheme.group(1).lower()!r} is not supported (http and https only)")
    if is_http_url(text):
        try:
            data = fetch_url(text, policy.fetch)
        except FetchError as e:
            raise ImageError(f"{name}: {e}") from None
        return _open(io.BytesIO(data), policy, name), name
    if text.startswith("data:"):
        return _open(io.BytesIO(_b64(text, name, policy.allow_paths)), policy, name), name
    if policy.allow_paths and len(text) < 1024 and "\n" not in text:
        path = Path(text).expanduser()
        if path.exists() or not B64_CHARS.match(text) or len(text) < 64:
            return _open(_read(path, name), policy, name), name
    return _open(io.BytesIO(_b64(text, name, policy.allow_paths)), policy, name), name


PROBE_CHARS = 64 * 1024  # a header is read from this much of a base64 string first


def probe_pixels(source: Any, allow_paths: bool = False) -> int | None:
    """An encoded image's pixel count from its header, before any decoding (what the endpoint prices a
    request by), or None when it cannot be read there (an URL, a broken header: the decoder says why later).
    Reads the first few KB of a base64 string first, all of it only when the header lies further in."""
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            return _header_pixels(bytes(source))
        if isinstance(source, Path) or (allow_paths and isinstance(source, str) and _is_path(source)):
            with open(Path(source).expanduser(), "rb") as f:
                return _header_pixels(f.read(1 << 20))
        if not isinstance(source, str) or is_url(source):
            return None
        text = source.strip()
        if text.startswith("data:"):
            text = text.partition(",")[2]
        text = "".join(text[: PROBE_CHARS + 4096].split())
        prefix = text[: len(text) // 4 * 4]
        pixels = _header_pixels(decode_base64(prefix)) if prefix else None
        return pixels if pixels is not None or len(prefix) < PROBE_CHARS else _header_pixels(decode_base64(source))
    except (ImageError, OSError, ValueError):
        return None


def _is_path(text: str) -> bool:
    return len(text) < 1024 and "\n" not in text and Path(text).expanduser().is_file()


def _header_pixels(data: bytes) -> int | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.width * image.height
    except Exception:  # a truncated prefix or a hostile header: not known here
        return None


def load_image(source: ImageInput, policy: DecodePolicy | None = None) -> Image.Image:
    """Any supported input -> an 8-bit RGB PIL image; raises ImageError naming the input and the problem."""
    image, name = open_image(source, policy or DecodePolicy())
    return decode_image(image, name)


def _read(path: Path, name: str) -> io.BytesIO:
    try:
        return io.BytesIO(path.read_bytes())
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except OSError as e:
        raise ImageError(f"{name}: cannot read file ({e.strerror or e})") from None


def _b64(text: str, name: str, paths: bool = True) -> bytes:
    try:
        return decode_base64(text)
    except ImageError as e:
        expected = "a file path, an http(s) URL or a base64 image" if paths else "an http(s) URL or a base64 image"
        raise ImageError(f"{name}: {e} (expected {expected})") from None
