"""Reading a model folder: a bundle (manifest.json, tokenizer.json and ONNX towers per precision) or an edge
pack (pack.json, one precision's vision tower and fixed label embeddings, no text tower), checked against the
sha256 of every file it names. Packs are written by `clipedge.pack`; they are read here, beside bundles, so
that loading a model never imports anything above this floor.

The manifest's dataclasses live in `clipedge.manifest` and are re-exported here (the bundle contract's
public names).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .manifest import (
    DEFAULT_PRECISIONS,
    FORMAT_VERSION,
    MANIFEST,
    PRECISIONS,
    READABLE_VERSIONS,
    TOWERS,
    Architecture,
    BundleError,
    FileEntry,
    Manifest,
    Preprocess,
    Scoring,
    Source,
    TokenizerSpec,
    TowerIO,
    Variant,
    check_file_names,
    file_entry,
    plain_file_name,
    sha256_file,
    write_manifest,
)

__all__ = [
    "DEFAULT_PRECISIONS",
    "FORMAT_VERSION",
    "LABELS_FILE",
    "MANIFEST",
    "PACK_FORMAT",
    "PACK_KIND",
    "PACK_MANIFEST",
    "PRECISIONS",
    "READABLE_VERSIONS",
    "TOWERS",
    "Architecture",
    "Bundle",
    "BundleError",
    "FileEntry",
    "Manifest",
    "PackInfo",
    "Preprocess",
    "Scoring",
    "Source",
    "TokenizerSpec",
    "TowerIO",
    "Variant",
    "check_file_names",
    "file_entry",
    "load_bundle",
    "load_pack",
    "plain_file_name",
    "sha256_file",
    "write_manifest",
]

PACK_MANIFEST = "pack.json"
PACK_KIND = "clipedge-pack"
PACK_FORMAT = 1
LABELS_FILE = "labels.npz"


@dataclass(frozen=True)
class PackInfo:
    """What a pack adds to the bundle view: its labels file, where it came from, its own hash."""

    labels: FileEntry
    label_count: int
    has_thresholds: bool
    source_bundle_hash: str
    source_name: str
    pack_hash: str


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its folder, manifest and the manifest's own sha256 (the bundle's identity)."""

    path: Path
    manifest: Manifest
    bundle_hash: str  # for an edge pack: its source bundle's (label embeddings made with that bundle fit it)
    pack: PackInfo | None = None  # an edge pack's (vision tower only, fixed labels); None for a bundle

    @property
    def has_text_tower(self) -> bool:
        return self.pack is None

    def variant(self, precision: str) -> Variant:
        if precision not in self.manifest.precisions:
            have = ", ".join(self.manifest.precisions) or "none"
            raise BundleError(f"{self.path}: bundle has no {precision!r} precision (it has: {have})")
        return self.manifest.precisions[precision]

    def tower_path(self, precision: str, tower: str) -> Path:
        entry = getattr(self.variant(precision), tower)
        if entry is None:
            raise BundleError(f"{self.path}: has no {tower} tower")
        return self.path / entry.file

    def verify(self, precision: str | None = None) -> None:
        """Check sha256 and size of the tokenizer and of one precision's towers (all precisions if None).

        Raises:
            BundleError: a file is missing, or its size or sha256 differs from the manifest.
        """
        m = self.manifest
        entries = [FileEntry(m.tokenizer.file, m.tokenizer.sha256, -1)] if self.pack is None else [self.pack.labels]
        for name in [precision] if precision else list(m.precisions):
            v = self.variant(name)
            entries += [v.vision] if v.text is None else [v.vision, v.text]
        for e in entries:
            path = self.path / e.file
            if not path.is_file():
                raise BundleError(f"{self.path}: file {e.file!r} named in manifest.json is missing")
            if e.bytes >= 0 and path.stat().st_size != e.bytes:
                raise BundleError(
                    f"{self.path}: {e.file} is {path.stat().st_size} bytes, manifest.json says {e.bytes}: "
                    "the bundle is damaged or was changed after export"
                )
            if sha256_file(path) != e.sha256:
                raise BundleError(
                    f"{self.path}: {e.file} does not match its sha256 in manifest.json: "
                    "the bundle is damaged or was changed after export"
                )


def load_bundle(path: str | Path, verify: str | bool | None = True, packs: bool = True) -> Bundle:
    """Read a bundle folder, or an edge pack's (see `load_pack`).

    Args:
        path: the folder.
        verify: True checks every file's sha256, a precision name checks that precision's files, False none.
        packs: False refuses an edge pack (what needs a full bundle: making a pack).

    Returns:
        The bundle (its manifest validated).

    Raises:
        BundleError: not a folder, no or malformed manifest.json, or a file that fails verification.
    """
    folder = Path(path)
    mpath = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    if not mpath.is_file():
        if (folder / PACK_MANIFEST).is_file():
            if not packs:
                raise BundleError(f"{folder}: is already an edge pack; this needs the full bundle it was made from")
            return load_pack(folder, verify)
        raise BundleError(f"{folder}: not a clipedge bundle (no {MANIFEST})")
    raw = mpath.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath}: not valid JSON ({e})") from None
    bundle = Bundle(folder, Manifest.from_dict(data), hashlib.sha256(raw).hexdigest())
    for name, variant in bundle.manifest.precisions.items():
        if variant.text is None:
            raise BundleError(f"{mpath}: missing key 'precisions.{name}.text'")
    check_file_names(bundle.manifest, str(mpath))
    if verify:
        bundle.verify(verify if isinstance(verify, str) else None)
    return bundle


def load_pack(folder: str | Path, verify: str | bool | None = True) -> Bundle:
    """Read an edge pack folder as a vision-only bundle (`Bundle.pack` set; see `load_bundle`).

    Raises:
        BundleError: no or malformed pack.json, another kind or format, or a file that fails verification.
    """
    folder = Path(folder)
    path = folder / PACK_MANIFEST
    raw = path.read_bytes()
    try:
        meta = json.loads(raw)
        if meta.get("kind") != PACK_KIND:
            raise BundleError(f"{path}: not a clipedge edge pack (kind {meta.get('kind')!r})")
        if meta.get("format_version") != PACK_FORMAT:
            raise BundleError(
                f"{path}: pack format_version {meta.get('format_version')!r} is not supported "
                f"(this clipedge reads {PACK_FORMAT}; upgrade clipedge)"
            )
        manifest = Manifest.from_dict(meta["manifest"])
        lab = meta["labels"]
        info = PackInfo(
            labels=FileEntry(lab["file"], lab["sha256"], int(lab["bytes"])),
            label_count=int(lab["count"]),
            has_thresholds=bool(lab.get("thresholds")),
            source_bundle_hash=str(meta["source_bundle"]["hash"]),
            source_name=str(meta["source_bundle"].get("name", "")),
            pack_hash=hashlib.sha256(raw).hexdigest(),
        )
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{path}: malformed pack manifest ({type(e).__name__}: {e})") from None
    # the files are the ones a pack has, by name: a pack.json cannot point anywhere else
    precision = meta.get("precision")
    if list(manifest.precisions) != [precision]:
        raise BundleError(f"{path}: a pack holds exactly one precision, the one named by 'precision'")
    vision = manifest.precisions[precision].vision.file
    if info.labels.file != LABELS_FILE or vision != f"vision.{precision}.onnx":
        raise BundleError(f"{path}: a pack's files are {LABELS_FILE} and vision.{precision}.onnx")
    check_file_names(manifest, str(path))
    bundle = Bundle(folder, manifest, info.source_bundle_hash, pack=info)
    if verify:
        bundle.verify(verify if isinstance(verify, str) else None)
    return bundle
