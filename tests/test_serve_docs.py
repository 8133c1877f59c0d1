"""Every example in docs/serving.md runs as written (the server's address substituted) against a real
`clipedge serve` process, and the conventions of Azure's inference server, MLflow and Hugging Face hold
for the requests their clients really send."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
DOC = ROOT / "docs" / "serving.md"
EXAMPLES = {p.stem.replace("_", " "): p for p in sorted((DEMO / "examples").glob("*.png"))}


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def server():
    with ServerProcess(DEMO, "--api-key-env", "CLIPEDGE_DOC_KEY", env={"CLIPEDGE_DOC_KEY": "doc-key"}) as s:
        yield s


@pytest.fixture(scope="module")
def open_server():
    with ServerProcess(DEMO) as s:
        yield s


def for_server(code: str, server) -> str:
    return code.replace("http://127.0.0.1:8000", server.url)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by .ci/run")
@pytest.mark.parametrize("index", range(len(doc_blocks("bash"))))
def test_curl_examples_run_as_written(open_server, index):
    code = for_server(doc_blocks("bash")[index], open_server)
    if "clipedge serve" in code or "pip install" in code:
        pytest.skip("the set-up block")
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out and '"error' not in out and "Traceback" not in out, out[:500]


@pytest.mark.parametrize("index", range(len(doc_blocks("python"))))
def test_python_examples_run_as_written(open_server, index):
    code = for_server(doc_blocks("python")[index], open_server)
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}  # the client posts to our URL; nothing leaves the machine
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout and "error" not in proc.stdout.lower(), proc.stdout[:500]


def b64(name: str, wrap: bool = True) -> str:
    data = EXAMPLES[name].read_bytes()
    return base64.encodebytes(data).decode() if wrap else base64.b64encode(data).decode()


def test_azure_server_conventions(server):
    url, key = server.url, {"Authorization": "Bearer doc-key"}
    r = httpx.get(url + "/")  # liveness: open without the key, plain "Healthy"
    assert r.status_code == 200 and r.text == "Healthy"
    assert httpx.get(url + "/swagger.json").status_code == 401  # with a key, only /, /health, /ready are open
    spec = httpx.get(url + "/swagger.json", headers=key).json()
    assert spec["openapi"].startswith("3.1") and {"/score", "/invocations", "/"} <= set(spec["paths"])
    body = {
        "input_data": {
            "columns": ["image", "text"],
            "index": [0],
            "data": [[b64("red circle"), "red circle, blue cross"]],
        }
    }
    r = httpx.post(url + "/score", json=body, headers={**key, "x-request-id": "my-trace-42"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == r.headers["x-ms-request-id"] == "my-trace-42"
    assert r.headers["x-ms-client-request-id"] == "my-trace-42"
    assert re.fullmatch(r"\d+\.\d{3}", r.headers["x-ms-run-fn-exec-ms"])
    r = httpx.post(
        url + "/score", json=body, headers={**key, "x-request-id": "x" * 101, "x-ms-client-request-id": "c1"}
    )
    rid = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f-]{36}", rid) and r.headers["x-ms-request-id"] == rid
    assert r.headers["x-ms-client-request-id"] == "c1"
    bad = httpx.post(
        url + "/score", json={"input_data": {"columns": ["image", "text"], "data": [["QUJD", "a"]]}}, headers=key
    )
    err = bad.json()
    assert bad.status_code == 400 and err["message"] == err["error"]["message"] and err["error"]["row"] == 0
    assert "x-request-id" in bad.headers and "x-ms-run-fn-exec-ms" in bad.headers
    denied = httpx.post(url + "/score", json=body)
    assert denied.status_code == 401 and denied.json()["message"] and "x-request-id" in denied.headers


def test_mlflow_and_hugging_face_contracts(server):
    url, key = server.url, {"Authorization": "Bearer doc-key"}
    records = [
        {"image": b64("green star", False), "text": "green star, red circle"},
        {"image": b64("red circle", False)},
    ]
    r = httpx.post(url + "/invocations", json={"dataframe_records": records}, headers=key)
    preds = r.json()["predictions"]
    assert r.status_code == 200 and len(preds) == 2
    assert [p["labels"][p["probs"].index(max(p["probs"]))] for p in preds] == ["green star", "red circle"]
    split = {
        "columns": ["image", "text"],
        "index": [0, 1],
        "data": [[rec["image"], rec.get("text")] for rec in records],
    }
    r2 = httpx.post(url + "/invocations", json={"dataframe_split": split}, headers=key)
    assert r2.json()["predictions"][0]["probs"] == pytest.approx(preds[0]["probs"], abs=1e-6)
    bad = httpx.post(url + "/invocations", json={"instances": [1]}, headers=key)
    assert (
        bad.status_code == 400
        and bad.json()["error_code"] == "BAD_REQUEST"
        and set(bad.json()) == {"error_code", "message"}
    )
    bad = httpx.post(url + "/invocations", content=b"{nope", headers=key)
    assert bad.json()["error_code"] == "MALFORMED_REQUEST"

    hf = {"inputs": b64("blue cross", False), "parameters": {"candidate_labels": ["red circle", "blue cross"]}}
    r = httpx.post(url + "/", json=hf, headers=key)
    out = r.json()
    assert r.status_code == 200 and [x["label"] for x in out] == ["blue cross", "red circle"]  # best first
    assert abs(sum(x["score"] for x in out) - 1) < 1e-5
    same = {**hf, "parameters": {**hf["parameters"], "hypothesis_template": "This is a photo of {}."}}
    assert httpx.post(url + "/", json=same, headers=key).json() == out  # Hugging Face's default template
    many = {**hf, "inputs": [hf["inputs"], b64("red circle", False)]}
    both = httpx.post(url + "/", json=many, headers=key).json()
    assert len(both) == 2 and both[1][0]["label"] == "red circle"
    bad = httpx.post(
        url + "/", json={**hf, "parameters": {"candidate_labels": ["a"], "hypothesis_template": "{}{x}"}}, headers=key
    )
    assert bad.status_code == 400 and set(bad.json()) == {"error"} and "hypothesis_template" in bad.json()["error"]
    assert json.dumps(bad.json()).count("{x}") == 0  # the template is not echoed
