"""Fixtures build their own models: tiny random CLIPs and the exact ViT-B/32 architecture with random
weights, exported to temporary folders once per session. Nothing touches the network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _quiet(_msg: str) -> None:
    pass


def _checkpoint(tmp_path_factory, arch):
    from clipedge_export.random_checkpoint import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / arch, arch, seed=0)


def _bundle(tmp_path_factory, checkpoint):
    from clipedge_export.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / checkpoint.name
    export_bundle(str(checkpoint), out, log=_quiet)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint):
    return _bundle(tmp_path_factory, tiny_checkpoint)


@pytest.fixture(scope="session")
def vitb32_checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory, "vit-b-32")


@pytest.fixture(scope="session")
def vitb32_bundle(tmp_path_factory, vitb32_checkpoint):
    return _bundle(tmp_path_factory, vitb32_checkpoint)


@pytest.fixture(scope="session")
def photos():
    """Real photographs that ship with scikit-image."""
    import skimage.data
    from PIL import Image

    return {
        name: Image.fromarray(getattr(skimage.data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")
    }


@pytest.fixture(scope="session")
def big_jpegs(tmp_path_factory, photos):
    """Camera-sized photos, as users' files are: scikit-image's photos resized to 2000-4000 px on the long
    side, with a camera sensor's grain (sigma 4 levels), saved as JPEG quality 95: 1.2-3.4 MB each, base64
    cells of 1.6-4.5 MB."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("big-jpegs")
    sizes = {"astronaut": 3000, "coffee": 4000, "chelsea": 2400, "rocket": 3200}
    rng = np.random.default_rng(0)
    paths = []
    for name, image in photos.items():
        scale = sizes[name] / max(image.size)
        big = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        grain = np.asarray(big).astype(np.float32) + rng.normal(0, 4, (big.height, big.width, 3))
        path = folder / f"{name}.jpg"
        Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=95)
        paths.append(path)
    return paths
