"""The HTTP endpoint, tested against real server processes on 127.0.0.1 with a real HTTP client."""

import base64
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .httpserver import ImageServer
from .serverproc import ServerProcess

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
EXAMPLES = {p.stem.replace("_", " "): p for p in sorted((DEMO / "examples").glob("*.png"))}


def b64(path: Path, wrap: bool = True) -> str:
    data = path.read_bytes()
    return base64.encodebytes(data).decode() if wrap else base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server():
    args = [
        "--max-images",
        "8",
        "--max-labels",
        "50",
        "--max-label-chars",
        "40",
        "--max-body-mb",
        "1",
        "--max-pixels",
        "1000000",
    ]
    with ServerProcess(DEMO, *args) as s:
        yield s


def post(server, body, path="/score", **kw):
    return httpx.post(
        server.url + path, content=json.dumps(body) if not isinstance(body, bytes) else body, timeout=30, **kw
    )


def test_model_card_sample_input(server):
    red, blue = EXAMPLES["red circle"], EXAMPLES["blue cross"]
    body = {
        "input_data": {
            "columns": ["image", "text"],
            "index": [0, 1],
            "data": [[b64(red), "red circle, blue cross, green star"], [b64(blue)]],
        }
    }
    r = post(server, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out, list) and len(out) == 2
    for row in out:
        assert set(row) == {"probs", "labels"} and row["labels"] == ["red circle", "blue cross", "green star"]
        assert abs(sum(row["probs"]) - 1) < 1e-6
    assert out[0]["probs"].index(max(out[0]["probs"])) == 0 and out[1]["probs"].index(max(out[1]["probs"])) == 1


def test_pandas_split_request_and_column_order(server):
    import pandas as pd

    labels = list(EXAMPLES)
    df = pd.DataFrame(
        {"image": [b64(p, wrap=False) for p in EXAMPLES.values()], "text": [", ".join(labels)] + [None] * 5}
    )
    r = post(server, {"input_data": json.loads(df.to_json(orient="split"))})
    assert r.status_code == 200, r.text
    assert [row["labels"][row["probs"].index(max(row["probs"]))] for row in r.json()] == labels
    swapped = {
        "input_data": {
            "columns": ["text", "image"],
            "data": [["cat, red circle", "data:image/png;base64," + b64(EXAMPLES["red circle"])]],
        }
    }
    r = post(server, swapped)
    assert r.status_code == 200 and r.json()[0]["labels"] == ["cat", "red circle"]


BAD = [
    (b"{not json", 400, "invalid_json", None),
    ({"data": []}, 400, "invalid_input", None),
    ({"input_data": {"columns": ["text"], "data": [["a, b"]]}}, 400, "invalid_input", None),
    ({"input_data": {"columns": ["image", "text"], "data": []}}, 400, "invalid_input", None),
    ({"input_data": {"columns": ["image", "text"], "data": [["QUJD"]]}}, 400, "invalid_labels", 0),
    ({"input_data": {"columns": ["image", "text"], "data": [["QUJD", " , ,"]]}}, 400, "invalid_labels", 0),
    ({"input_data": {"columns": ["image", "text"], "data": [["QUJD", "a, " + "x" * 41]]}}, 400, "label_too_long", 0),
    (
        {"input_data": {"columns": ["image", "text"], "data": [["QUJD", ",".join(f"l{i}" for i in range(51))]]}},
        400,
        "too_many_labels",
        0,
    ),
    ({"input_data": {"columns": ["image", "text"], "data": [["QUJD", "a"]] * 9}}, 400, "too_many_images", None),
    ({"input_data": {"columns": ["image", "text"], "data": [["%%%notbase64%%%", "a, b"]]}}, 400, "invalid_image", 0),
    ({"input_data": {"columns": ["image", "text"], "data": [["RED", "a, b"], [12345]]}}, 400, "invalid_image", 1),
    (
        {"input_data": {"columns": ["image", "text"], "data": [["RED", "a, b"], ["/etc/passwd"]]}},
        400,
        "invalid_image",
        1,
    ),
    (
        {"input_data": {"columns": ["image", "text"], "data": [["RED", "a, b"], ["QUJDREVGR0g="]]}},
        400,
        "invalid_image",
        1,
    ),
    (
        {"input_data": {"columns": ["image", "text"], "index": [0, 1], "data": [["RED", "a, b"]]}},
        400,
        "invalid_input",
        None,
    ),
]


@pytest.mark.parametrize("body, status, code, row", BAD)
def test_bad_inputs_are_4xx_json_naming_the_row(server, body, status, code, row):
    red = b64(EXAMPLES["red circle"], wrap=False)
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace('"RED"', json.dumps(red)))
    r = post(server, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["row"] == row and err["message"]
    assert red[:40] not in r.text and "Traceback" not in r.text


def test_image_errors_say_why(server):
    r = post(server, {"input_data": {"columns": ["image", "text"], "data": [["QUJDREVGR0g=", "a, b"]]}})
    msg = r.json()["error"]["message"]
    assert msg.startswith("The provided image string cannot be decoded. Expected format is base64 string or url string")
    assert "not an image" in msg


def test_body_cap_and_pixel_cap(server):
    big = {"input_data": {"columns": ["image", "text"], "data": [["A" * (1024 * 1024 + 10), "a, b"]]}}
    r = post(server, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: the cap must hold while streaming
        yield b'{"input_data": {"columns": ["image", "text"], "data": [["'
        for _ in range(20):
            yield b"A" * 65536
        yield b'", "a"]]}}'

    r = httpx.post(server.url + "/score", content=chunks(), timeout=30)
    assert r.status_code == 413

    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1200, 1000)).save(buf, format="PNG")  # 1.2 MP, a few KB: the cap is on pixels, not bytes
    body = {"input_data": {"columns": ["image", "text"], "data": [[base64.b64encode(buf.getvalue()).decode(), "a, b"]]}}
    r = post(server, body)
    assert (
        r.status_code == 400 and "1200x1000 image exceeds the pixel limit of 1,000,000" in r.json()["error"]["message"]
    )


def test_native_routes(server):
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in list(EXAMPLES.values())[:2]]
    r = httpx.post(
        server.url + "/classify", files=files, data={"labels": "red circle, blue cross, orange square"}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert [x["image"] for x in r.json()] == [p.name for p in list(EXAMPLES.values())[:2]]
    r = post(server, {"images": [b64(EXAMPLES["red circle"])]}, "/embed/image")
    assert r.status_code == 200 and r.json()["dim"] == 64 and len(r.json()["embeddings"]) == 1
    r = post(server, {"texts": ["a red circle", "a blue cross"]}, "/embed/text")
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 2
    r = post(server, {"texts": "not a list"}, "/embed/text")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    r = httpx.post(server.url + "/classify", files=files, timeout=30)  # no labels field, and no fixed labels
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_labels"
    assert r.json()["message"].startswith("no labels given")
    assert httpx.get(server.url + "/docs").status_code == 200
    assert "/score" in httpx.get(server.url + "/openapi.json").json()["paths"]
    assert httpx.get(server.url + "/nope").json()["error"]["code"] == "http_error"


def test_health_ready_metrics_and_no_cors(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/ready").json()
    from clipedge import openvino_engine

    expected = ("openvino", "int8-static") if openvino_engine.available() else ("onnxruntime", "int8")
    assert ready["status"] == "ready" and (ready["engine"], ready["precision"]) == expected  # the ranking's choice
    r = httpx.get(server.url + "/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "clipedge_requests_total",
        "clipedge_request_seconds_bucket",
        "clipedge_batch_size_bucket",
        "clipedge_queue_depth",
    ):
        assert name in text
    assert 'route="/score",status="200"' in text and 'route="/score",status="400"' in text


def test_url_images_allowed_only_with_private_opt_in(server):
    with ImageServer() as images:
        body = {"input_data": {"columns": ["image", "text"], "data": [[images.url + "/img.png", "blue, red"]]}}
        r = post(server, body)  # this server does not allow private addresses
        assert r.status_code == 400 and "non-public address" in r.json()["error"]["message"]
        with ServerProcess(DEMO, "--allow-private-urls") as private:
            many = {
                "input_data": {
                    "columns": ["image", "text"],
                    "data": [[images.url + f"/img{i}.png", "blue, red"] for i in range(6)],
                }
            }
            r = post(private, many)
            assert r.status_code == 200 and len(r.json()) == 6
            r = post(
                private, {"input_data": {"columns": ["image", "text"], "data": [[images.url + "/notfound", "a, b"]]}}
            )
            assert r.status_code == 400 and "HTTP 404" in r.json()["error"]["message"]


def test_api_key_checked_before_the_body(tmp_path):
    with ServerProcess(
        DEMO, "--api-key-env", "CLIPEDGE_TEST_KEY", "--max-body-mb", "1", env={"CLIPEDGE_TEST_KEY": "s3cret"}
    ) as s:
        huge = b"x" * (3 * 1024 * 1024)
        r = httpx.post(s.url + "/score", content=huge, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert httpx.post(s.url + "/score", content=b"{}").status_code == 401
        ok = {
            "input_data": {
                "columns": ["image", "text"],
                "data": [[b64(EXAMPLES["red circle"]), "red circle, blue cross"]],
            }
        }
        assert (
            httpx.post(s.url + "/score", content=json.dumps(ok), headers={"Authorization": "Bearer s3cret"}).status_code
            == 200
        )
        assert httpx.post(s.url + "/score", content=json.dumps(ok), headers={"x-api-key": "s3cret"}).status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200  # probes stay open


def _request(url, n_images, timeout=60):
    img = b64(EXAMPLES["green star"], wrap=False)
    body = {
        "input_data": {
            "columns": ["image", "text"],
            "data": [[img, "green star, red circle"]] + [[img]] * (n_images - 1),
        }
    }
    t0 = time.monotonic()
    r = httpx.post(url + "/score", content=json.dumps(body), timeout=timeout)
    return r, time.monotonic() - t0


@pytest.mark.slow
def test_queue_full_gets_fast_503_while_accepted_succeed(vitb32_bundle):
    with ServerProcess(vitb32_bundle, "--queue-size", "4", "--max-batch", "4", "--precision", "int8") as s:
        health_ok = []

        def probe():
            for _ in range(10):
                health_ok.append(httpx.get(s.url + "/health", timeout=5).status_code == 200)
                time.sleep(0.05)

        t = threading.Thread(target=probe)
        t.start()
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(lambda _: _request(s.url, 2), range(24)))
        t.join()
        codes = [r.status_code for r, _ in results]
        assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}
        refused = [(r, dt) for r, dt in results if r.status_code == 503]
        assert all(
            r.headers.get("retry-after") == "1" and r.json()["error"]["code"] == "queue_full" for r, _ in refused
        )
        assert min(dt for _, dt in refused) < 1.0
        assert all(health_ok) and len(health_ok) == 10


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(vitb32_bundle):
    s = ServerProcess(vitb32_bundle, "--precision", "int8", "--max-batch", "8", "--max-queue-ms", "60000")
    s.wait_ready()

    def in_flight() -> float:
        text = httpx.get(s.url + "/metrics").text
        return float(next(x.split()[1] for x in text.splitlines() if x.startswith("clipedge_queue_depth ")))

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_request, s.url, 16) for _ in range(3)]
        deadline = time.monotonic() + 30
        while in_flight() < 48 and time.monotonic() < deadline:  # all 48 images admitted, none finished
            time.sleep(0.01)
        assert in_flight() == 48  # the proof that work is in flight when the signal arrives
        s.proc.send_signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    assert [r.status_code for r, _ in results] == [200, 200, 200], [r.text for r, _ in results]
    assert s.proc.wait(30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/health", timeout=2)
    s.stop()
