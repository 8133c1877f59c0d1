"""The README's quickstart runs as shown on a fresh clone: its Python block and its commands, from a
folder that holds the clone's models/ (a symlink), writing only there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .serverproc import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
QUICKSTART = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]


def workdir(tmp_path: Path) -> Path:
    (tmp_path / "models").symlink_to(ROOT / "models")
    return tmp_path


def test_readme_is_short_and_links_the_docs():
    before_docs = README.split("docs/", 1)[0]
    assert len(before_docs.splitlines()) <= 150
    for doc in ("export", "runtime", "serving", "batch", "benchmarks"):
        assert f"(docs/{doc}.md)" in README and (ROOT / "docs" / f"{doc}.md").is_file()


def test_quickstart_python_runs_as_shown(tmp_path):
    code = re.findall(r"```python\n(.*?)```", QUICKSTART, re.S)[0]
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[:2] == ["(1.0, 'red circle')", "(1.0, 'green star')"]
    assert "'labels': ['blue cross']" in proc.stdout and (tmp_path / "labels.npz").is_file()


def test_quickstart_commands_run_as_shown(tmp_path):
    work = workdir(tmp_path)
    python = re.findall(r"```python\n(.*?)```", QUICKSTART, re.S)[0]
    subprocess.run([sys.executable, "-c", python], cwd=work, check=True, capture_output=True)  # labels.npz
    lines = [line for line in re.findall(r"```bash\n(.*?)```", QUICKSTART, re.S)[0].splitlines() if line.strip()]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in lines:
        command = line.split("  #", 1)[0].strip()
        if command.startswith("clipedge serve"):
            port = free_port()
            server = subprocess.Popen(
                command.rstrip("&").replace("--port 8000", f"--port {port}").split(),
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                for _ in range(600):
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
                assert httpx.get(f"http://127.0.0.1:{port}/").text == "Healthy"
            finally:
                server.terminate()
                server.wait(30)
            continue
        proc = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
    assert (work / "results.jsonl").read_text().count("\n") == 6
