import numpy as np
import pytest
from clipedge.bundle import load_bundle
from clipedge.tokenizer import ClipTokenizer

CORPUS = [
    "a photo of a cat",
    "A Photo Of A CAT!!!",
    "it's the dog's toy, isn't it? they're here; we'll see.",
    "naïve café — crème brûlée, Zürich, São Paulo, Ελληνικά, русский, 日本語のテキスト",
    "emoji 🐱🐶🚀 and symbols #hashtag @user $100 50% a+b=c <tag> {braces} [brackets]",
    "   extra    whitespace \t tabs \n newlines   ",
    "",
    "numbers 1234567890 3.14159 1st 2nd 3rd",
    "hyphen-ated under_scored slash/separated dot.separated",
    " ".join(["a long caption that goes on and on"] * 20),
    "<|startoftext|> special <|endoftext|>",
]


@pytest.fixture(scope="module")
def tokenizers(tiny_bundle, tiny_checkpoint):
    from transformers import CLIPTokenizer

    bundle = load_bundle(tiny_bundle)
    ours = ClipTokenizer(tiny_bundle / "tokenizer.json", bundle.manifest.tokenizer)
    return ours, CLIPTokenizer.from_pretrained(str(tiny_checkpoint))


def test_known_ids(tokenizers):
    ours, _ = tokenizers
    assert ours.encode(["a photo of a cat"])[0].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("text", CORPUS)
def test_same_ids_as_transformers(tokenizers, text):
    ours, hf = tokenizers
    expected = hf(text, truncation=True, max_length=77)["input_ids"]
    assert ours.encode([text])[0].tolist() == expected


def test_truncation_keeps_eos_and_padding_is_eos(tokenizers):
    ours, _ = tokenizers
    ids = ours.encode([CORPUS[-2], "short"])
    assert ids.shape == (2, 77)
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert ids[1, :3].tolist() == [49406, 3005, 49407] and (ids[1, 3:] == 49407).all()
    assert ids.dtype == np.int64


def test_empty_string_is_bos_eos(tokenizers):
    ours, _ = tokenizers
    assert ours.encode([""])[0].tolist() == [49406, 49407]
