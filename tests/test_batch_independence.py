"""An image's probabilities do not depend on the images it runs with, nor a label's embedding on the labels
embedded with it: for every precision of the demo bundle, in the library and on the endpoint."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from clipedge import ZeroShotClassifier
from clipedge import openvino_engine as ove
from clipedge_export.shapes import render

from .serverproc import ServerProcess

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
LABELS = ["red circle", "orange square", "yellow triangle", "green star", "blue cross", "purple circle"]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return [render(rng).image for _ in range(65)]


ENGINES = [("fp32", "onnxruntime"), ("int8", "onnxruntime"), ("int8-static", "onnxruntime")]
if ove.available():
    ENGINES.append(("int8-static", "openvino"))


@pytest.mark.parametrize("precision, engine", ENGINES)
def test_an_image_alone_or_in_any_batch(precision, engine, images):
    clf = ZeroShotClassifier.load(DEMO, precision, "cpu", engine=engine)
    labels = clf.label_embeddings(LABELS)
    px = np.stack([clf.prepare(im) for im in images])
    alone = clf.score(clf.embed(px[:1]), labels)[0]
    for n in (2, 3, 8, 17, 32, 64):
        for batch_size in (n, 32):
            probs = clf.score(clf.embed(px[:n], batch_size), labels)[0]
            assert np.abs(probs - alone).max() <= 1e-5, (precision, n, batch_size)
            assert probs.argmax() == alone.argmax()


def test_the_test_can_fail_without_it(images):
    """Dynamic int8 run on whole batches moves with its batch mates: what batch_independent prevents."""
    clf = ZeroShotClassifier.load(DEMO, "int8", "cpu", batch_independent=False, engine="onnxruntime")
    labels = clf.label_embeddings(LABELS)
    px = np.stack([clf.prepare(im) for im in images])
    alone = clf.score(clf.embed(px[:1]), labels)[0]
    worst = max(np.abs(clf.score(clf.embed(px[:n], 64), labels)[0] - alone).max() for n in (8, 32, 64))
    assert worst > 1e-4


@pytest.mark.parametrize("precision, engine", ENGINES)
def test_a_label_alone_or_with_others(precision, engine):
    clf = ZeroShotClassifier.load(DEMO, precision, "cpu", label_cache_size=0, engine=engine)
    alone = clf.embed_texts(["a photo of a green star"])[0]
    crowd = ["x" * 40, "a photo of a green star", "red", "a long label about many purple circles and crosses"]
    together = clf.embed_texts(crowd)[1]
    assert float(alone @ together) > 1 - 1e-6


def test_on_the_endpoint_requests_do_not_change_each_other(images):
    import io

    def b64(im):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    cells = [b64(im) for im in images[:33]]

    for args in (("--precision", "int8", "--engine", "onnxruntime"), ()):  # and the default (OpenVINO if there)
        check_endpoint(args, cells, score_with)


def score_with(url):
    def score(rows):
        body = {
            "input_data": {
                "columns": ["image", "text"],
                "data": [[rows[0], ", ".join(LABELS)]] + [[r] for r in rows[1:]],
            }
        }
        r = httpx.post(url + "/score", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return np.array(r.json()[0]["probs"])

    return score


def check_endpoint(args, cells, score_with):
    with ServerProcess(DEMO, *args) as s:
        score = score_with(s.url)
        alone = score(cells[:1])
        assert np.abs(score(cells[:33]) - alone).max() <= 1e-5
        with ThreadPoolExecutor(8) as pool:  # other clients' images batched with this one
            crowded = list(pool.map(lambda k: score(cells[:1] if k == 0 else cells[k : k + 4]), range(16)))
        assert np.abs(crowded[0] - alone).max() <= 1e-5
