import numpy as np
import pytest
from clipedge.bundle import Preprocess
from clipedge.preprocess import center_crop, normalise, preprocess, resize_size
from PIL import Image

OPENAI = Preprocess(
    resize_shortest_edge=224,
    resample="bicubic",
    crop_size=(224, 224),
    do_center_crop=True,
    rescale_factor=1 / 255,
    mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711),
)


@pytest.fixture(scope="module")
def hf_processor(vitb32_checkpoint_light):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(str(vitb32_checkpoint_light))


@pytest.fixture(scope="module")
def vitb32_checkpoint_light(tmp_path_factory):
    """Only the preprocessor_config.json of openai/clip-vit-base-patch32 (no weights needed)."""
    import json

    from clipedge_export.random_checkpoint import preprocessor_config

    d = tmp_path_factory.mktemp("pp")
    (d / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(224)))
    return d


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_matches_clip_image_processor_on_photos(photos, hf_processor, name):
    image = photos[name]
    ref = hf_processor(images=[image], return_tensors="np")["pixel_values"][0]
    ours = preprocess(image, OPENAI)
    assert ours.shape == ref.shape == (3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-2


@pytest.mark.parametrize("size", [(224, 224), (225, 224), (97, 131), (1000, 100), (100, 1000), (640, 480)])
def test_matches_on_odd_sizes(hf_processor, size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ref = hf_processor(images=[image], return_tensors="np")["pixel_values"][0]
    assert np.abs(preprocess(image, OPENAI) - ref).max() < 1e-2


@pytest.mark.parametrize("size", [(1000, 30), (30, 1000)])
def test_extreme_aspect_within_one_level(hf_processor, size):
    """Beyond 16:1 only a window is resized (PIL box): at most one uint8 level from the full resize."""
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ref = hf_processor(images=[image], return_tensors="np")["pixel_values"][0]
    one_level = 1 / 255 / min(OPENAI.std)
    assert np.abs(preprocess(image, OPENAI) - ref).max() <= one_level + 1e-6


def test_resize_size_like_transformers():
    assert resize_size(640, 480, 224) == (298, 224)
    assert resize_size(480, 640, 224) == (224, 298)
    assert resize_size(224, 224, 224) == (224, 224)


def test_extreme_aspect_ratio_uses_a_window_with_the_same_centre():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 20000, 3), dtype=np.uint8))  # 500:1
    from clipedge.preprocess import RESAMPLE

    full = np.asarray(image.resize(resize_size(*image.size, 224), RESAMPLE["bicubic"]))
    naive = normalise(center_crop(full, 224, 224), OPENAI)
    assert np.abs(preprocess(image, OPENAI) - naive).max() <= 1 / 255 / min(OPENAI.std) + 1e-6


def test_center_crop_pads_small_images():
    arr = np.full((10, 20, 3), 7, dtype=np.uint8)
    out = center_crop(arr, 16, 16)
    assert out.shape == (16, 16, 3) and out[0, 0, 0] == 0 and out[8, 8, 0] == 7


def test_requires_rgb():
    with pytest.raises(ValueError, match="expects an RGB image"):
        preprocess(Image.new("L", (10, 10)), OPENAI)
