"""What a user gets from `pip install clipedge[serve,batch,plot]`: a wheel built from the source tree,
installed (not editable) into a fresh virtual environment, used from a folder that is not a checkout."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
LABELS = "red circle, orange square, yellow triangle, green star, blue cross, purple circle"


def source_tree(dest: Path) -> Path:
    """The files a clean checkout has (tracked, plus new files git does not ignore), copied to `dest`."""
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, names):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tree = source_tree(tmp_path_factory.mktemp("checkout"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(tree)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(out.glob("clipedge-*.whl"))


def test_wheel_carries_every_package_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {str(Path(n).parent) for n in names if n.endswith("__init__.py")}
    expected = {
        str(init.parent.relative_to(base))
        for base in (ROOT / "runtime", ROOT / "export")
        for init in base.rglob("__init__.py")
    }
    assert expected <= packaged, expected - packaged
    assert "clipedge_export/data/bpe_simple_vocab_16e6.txt.gz" in names
    assert "clipedge/serve/ui.html" in names  # the try-it page (GET /ui) is package data
    assert not any(n.startswith(("tests/", "bench/", "models/")) for n in names)  # no model ships in the wheel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_installed_wheel_classifies_serves_batches_and_evaluates(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, cli = venv / "bin" / "python", venv / "bin" / "clipedge"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"{wheel}[serve,batch,plot]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "work"  # not a checkout: no models/demo here
    work.mkdir()
    bundle = shutil.copytree(DEMO, work / "my-bundle")
    images = sorted(str(p) for p in (bundle / "examples").glob("*.png"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CLIPEDGE_MODEL", "VIRTUAL_ENV")}

    def clipedge(*args: str, check: int | None = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(cli), *args], cwd=work, capture_output=True, text=True, timeout=300, env=env)
        if check is not None:
            assert proc.returncode == check, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        return proc

    lean = subprocess.run([str(py), "-c", "import torch"], capture_output=True)
    assert lean.returncode != 0  # the runtime never pulls torch in
    no_model = clipedge("classify", *images, "--labels", LABELS, check=2)
    assert "no model given: pass -m BUNDLE" in no_model.stderr and "Traceback" not in no_model.stderr

    out = clipedge("classify", *images, "--labels", LABELS, "-m", str(bundle), "--plot", "plot.png")
    assert "red_circle.png" in out.stdout and (work / "plot.png").stat().st_size > 10_000

    (work / "labels.txt").write_text(LABELS.replace(", ", "\n") + "\n")
    clipedge("labels", "build", "labels.txt", "-m", str(bundle), "-o", "labels.npz")
    out = clipedge("classify", images[0], "-m", str(bundle), "--label-embeddings", "labels.npz", "--json")
    assert json.loads(out.stdout)[0]["probs"]

    shutil.copytree(bundle / "examples", work / "photos")
    clipedge("batch", "photos", "-m", str(bundle), "--labels", LABELS, "-o", "out.parquet")
    rows = subprocess.run(
        [str(py), "-c", "import pyarrow.parquet as pq; t = pq.read_table('out.parquet'); print(t.num_rows)"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert rows.stdout.strip() == "6"

    for p in images:  # an image-folder dataset: one folder per class
        name = Path(p).stem
        (work / "ds" / name).mkdir(parents=True)
        shutil.copy(p, work / "ds" / name / "a.png")
    report = json.loads(clipedge("eval", "ds", "-m", str(bundle), "--json").stdout)
    assert report["top1_accuracy"]["int8"] == 1.0

    bench = clipedge("bench", "-m", str(bundle), "--quick", "--batch-sizes", "1", "--json", "bench.json")
    timed = json.loads((work / "bench.json").read_text())
    assert {r["precision"] for r in timed["rows"]} == {"fp32", "int8", "int8-static"}  # ONNX Runtime, CPU
    assert timed["torch_imported"] is False and "| onnxruntime cpu int8 (default) | classify |" in bench.stdout

    port = free_port()
    server = subprocess.Popen(
        [str(cli), "serve", "-m", str(bundle), "--port", str(port)],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        code = f"""
import base64, json, time, urllib.request
url = "http://127.0.0.1:{port}"
for _ in range(300):
    try:
        if urllib.request.urlopen(url + "/ready").status == 200:
            break
    except Exception:
        time.sleep(0.2)
img = base64.encodebytes(open({images[4]!r}, "rb").read()).decode()
body = {{"input_data": {{"columns": ["image", "text"], "index": [0], "data": [[img, {LABELS!r}]]}}}}
req = urllib.request.Request(url + "/score", json.dumps(body).encode(), {{"Content-Type": "application/json"}})
print(json.dumps(json.loads(urllib.request.urlopen(req).read())))
"""
        out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        answer = json.loads(out.stdout)[0]
        assert answer["labels"][answer["probs"].index(max(answer["probs"]))] == "red circle"
    finally:
        server.terminate()
        server.wait(30)
    assert server.returncode == 0, server.stderr.read()[-2000:] if server.stderr else ""
