"""The try-it page's screenshot for docs/serving.md: starts `clipedge serve` on the demo bundle (127.0.0.1, a
free port), opens /ui in headless Chromium (Debian's chromium and chromium-driver, driven by selenium from
the `dev` extra), classifies an example image and saves the page as a small palette PNG.

    python -m bench.ui_screenshot [--out docs/ui.png] [--image models/demo/examples/green_star.png]
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
LABELS = "red circle, orange square, yellow triangle, green star, blue cross, purple circle"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if urllib.request.urlopen(url + "/ready", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def screenshot(url: str, image: Path, out: Path, width: int, height: int) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        raise SystemExit("needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    with tempfile.TemporaryDirectory() as profile:
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--disable-background-networking",
            "--proxy-server=127.0.0.1:9",  # nothing but loopback
        ):
            opts.add_argument(arg)
        driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
        try:
            driver.get(url + "/ui")
            wait = WebDriverWait(driver, 30)
            wait.until(lambda d: d.find_element(By.ID, "key-status").text)
            driver.find_element(By.ID, "file").send_keys(str(image.resolve()))
            driver.find_element(By.ID, "labels").send_keys(LABELS)
            driver.find_element(By.ID, "template").send_keys("a photo of a {}.")
            driver.find_element(By.ID, "submit").click()
            wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-state") in ("done", "error"))
            driver.execute_script("window.scrollTo(0, 0)")
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    picture = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, optimize=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "ui.png")
    p.add_argument("--image", type=Path, default=ROOT / "models" / "demo" / "examples" / "green_star.png")
    p.add_argument("--bundle", type=Path, default=ROOT / "models" / "demo")
    p.add_argument("--size", default="1180x860", help="window WIDTHxHEIGHT in CSS pixels")
    args = p.parse_args(argv)
    width, height = (int(x) for x in args.size.split("x"))
    port = free_port()
    cmd = [sys.executable, "-m", "clipedge.cli", "serve", "-m", str(args.bundle), "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, server)
        screenshot(url, args.image, args.out, width, height)
    finally:
        server.terminate()
        server.wait(30)
    print(f"{args.out}: {args.out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
