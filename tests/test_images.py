import base64
import io

import numpy as np
import pytest
from clipedge.images import DecodePolicy, ImageError, decode_base64, load_image, to_rgb
from PIL import Image


def _png(image: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


RED = Image.new("RGB", (40, 30), (255, 0, 0))


def test_sources_path_bytes_pil_array_base64(tmp_path):
    path = tmp_path / "red.png"
    RED.save(path)
    data = path.read_bytes()
    b64 = base64.b64encode(data).decode()
    sources = [
        path,
        str(path),
        data,
        bytearray(data),
        RED,
        np.asarray(RED),
        b64,
        "data:image/png;base64," + b64,
        base64.encodebytes(data).decode(),  # Azure's samples: newline every 76 chars
        base64.urlsafe_b64encode(data).decode().rstrip("="),
    ]
    for src in sources:
        im = load_image(src)
        assert im.mode == "RGB" and im.size == (40, 30) and im.getpixel((5, 5)) == (255, 0, 0)


def test_float_array_and_grey_array():
    assert load_image(np.ones((4, 5), dtype=np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((4, 5, 1), 9, dtype=np.uint8)).getpixel((0, 0)) == (9, 9, 9)
    with pytest.raises(ImageError, match=r"expected an HxW or HxWx3/4 array"):
        load_image(np.zeros((3, 4, 5, 6), dtype=np.uint8))
    with pytest.raises(ImageError, match="expected uint8 values"):
        load_image(np.full((4, 4, 3), 300, dtype=np.int32))


def test_exif_orientation_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = load_image(_png(im, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_modes_converted():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    r, g, b = load_image(_png(cmyk, "JPEG", quality=100)).getpixel((4, 4))
    assert r > 200 and g < 50 and b < 50
    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))  # I;16 white
    assert load_image(_png(sixteen)).getpixel((1, 1)) == (255, 255, 255)
    mid = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    assert load_image(_png(mid)).getpixel((1, 1)) == (128, 128, 128)
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 200, 0] + [0] * 765)
    assert load_image(_png(palette)).getpixel((1, 1)) == (0, 200, 0)
    assert load_image(_png(Image.new("L", (8, 8), 77))).getpixel((1, 1)) == (77, 77, 77)
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent -> white, as transformers
    assert load_image(_png(clear)).getpixel((1, 1)) == (255, 255, 255)
    half = Image.new("LA", (8, 8), (0, 128))
    assert load_image(_png(half)).getpixel((1, 1)) == (127, 127, 127)
    assert to_rgb(Image.new("1", (4, 4), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_first_frame_of_animation():
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    r, _, b = load_image(buf.getvalue()).getpixel((5, 5))
    assert r > 200 and b < 50


def test_pixel_cap_before_decode():
    data = _png(Image.new("RGB", (3000, 2000)))
    with pytest.raises(ImageError, match="3000x2000 image exceeds the pixel limit of 1,000,000"):
        load_image(data, DecodePolicy(max_pixels=1_000_000))


def test_format_allowlist():
    data = _png(RED, "BMP")
    with pytest.raises(ImageError, match=r"not an image in an allowed format \(PNG\)"):
        load_image(data, DecodePolicy(formats=("PNG",)))
    assert load_image(data).size == (40, 30)


def test_bad_inputs_named(tmp_path):
    truncated = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(truncated[: len(truncated) // 2])
    with pytest.raises(ImageError, match="nothere.jpg: no such file"):
        load_image(str(tmp_path / "nothere.jpg"))
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageError, match="notes.txt: not an image in an allowed format"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ImageError, match="not a valid base64 string"):
        load_image("data:image/png;base64,%%%")
    long_garbage = "!" * 5000
    with pytest.raises(ImageError) as e:
        load_image(long_garbage)
    assert "!!!!" not in str(e.value)  # never echo the payload
    with pytest.raises(ImageError, match="unsupported image input type"):
        load_image(12345)  # type: ignore[arg-type]


def test_decode_base64_variants():
    assert decode_base64("aGVsbG8=") == b"hello"
    assert decode_base64("aGVs\nbG8") == b"hello"
    assert decode_base64("data:text/plain;base64,aGVsbG8=") == b"hello"
    with pytest.raises(ImageError):
        decode_base64("data:text/plain,hello")


def test_jpeg_draft_decodes_at_reduced_scale(tiny_bundle):
    from clipedge import ZeroShotClassifier

    big = _png(Image.new("RGB", (2000, 1500), (10, 200, 30)), "JPEG")
    plain = load_image(big)
    draft = load_image(big, DecodePolicy(draft=224))
    assert plain.size == (2000, 1500) and draft.size == (500, 375)  # 1/4: the smallest scale keeping >= 224
    clf = ZeroShotClassifier.load(tiny_bundle, fast_jpeg=True)
    assert clf.decode_policy.draft == 128  # twice the bundle's resize_shortest_edge (docs/runtime.md)


def test_paths_refused_when_not_allowed(tmp_path):
    path = tmp_path / "red.png"
    RED.save(path)
    untrusted = DecodePolicy(allow_paths=False)
    with pytest.raises(ImageError, match="file paths are not accepted"):
        load_image(path, untrusted)
    with pytest.raises(ImageError, match="not a valid base64 string"):
        load_image(str(path), untrusted)  # a path string is just bad base64 here: the file is never read
    assert load_image(base64.b64encode(path.read_bytes()).decode(), untrusted).size == (40, 30)
