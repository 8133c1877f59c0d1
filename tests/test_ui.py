"""The try-it page (GET /ui) in a real headless Chromium against real `clipedge serve` processes on
127.0.0.1, and the /classify `url` field it uses. Chromium is kept off every network but loopback (a dead
proxy for everything else, no DNS), so no test traffic leaves 127.0.0.1."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from clipedge.serve.ui import NONCE

from .httpserver import Handler, ImageServer
from .serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
EXAMPLES = {p.stem.replace("_", " "): p for p in sorted((DEMO / "examples").glob("*.png"))}
LABELS = "red circle, orange square, yellow triangle, green star, blue cross, purple circle"
PAGE = ROOT / "runtime" / "clipedge" / "serve" / "ui.html"
KEY = "ui-s3cret"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run does)",
)


@pytest.fixture(scope="module")
def server():
    with ServerProcess(DEMO) as s:  # private URLs not allowed: the default
        yield s


@pytest.fixture(scope="module")
def key_server():
    with ServerProcess(DEMO, "--api-key-env", "CLIPEDGE_UI_KEY", env={"CLIPEDGE_UI_KEY": KEY}) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--proxy-server=127.0.0.1:9",  # anything not on loopback goes to a closed port (loopback bypasses it)
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # and no DNS
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def by_id(driver, id_: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, id_)


def wait_for(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def open_page(driver, server) -> None:
    driver.get(server.url + "/ui")
    wait_for(driver, lambda d: by_id(d, "key-status").text)  # the page's script ran and asked the server


def submit(driver) -> str:
    """Press Classify, wait for the answer; returns "done" or "error"."""
    driver.execute_script("document.getElementById('results').dataset.state = ''")
    by_id(driver, "submit").click()

    def finished(d):
        state = by_id(d, "results").get_attribute("data-state")
        return state if state in ("done", "error") else False

    return wait_for(driver, finished)


def shown_labels(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .row .label")]


def type_into(driver, id_: str, text: str) -> None:
    field = by_id(driver, id_)
    field.clear()
    field.send_keys(text)


def severe_console_messages(driver) -> list[str]:
    """Console errors (CSP violations show up here), leaving out failed requests the test made on purpose."""
    entries = driver.get_log("browser")
    return [e["message"] for e in entries if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


# -- the page in a browser -------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_chromium
def test_page_classifies_an_uploaded_and_a_dropped_image(browser, server):
    open_page(browser, server)
    assert by_id(browser, "key-status").text == "no key needed"
    wait_for(browser, lambda d: "int8" in by_id(d, "server").text)  # bundle / precision / engine from /ready
    by_id(browser, "file").send_keys(str(EXAMPLES["red circle"]))
    type_into(browser, "labels", LABELS)
    assert submit(browser) == "done", by_id(browser, "error").text
    labels = shown_labels(browser)
    assert labels[0] == "red circle" and sorted(labels) == sorted(LABELS.split(", "))  # best first, all shown
    from selenium.webdriver.common.by import By

    top = browser.find_element(By.CSS_SELECTOR, "#results .row")
    assert "top" in top.get_attribute("class")
    pcts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .row .pct")]
    values = [float(p.rstrip("%")) for p in pcts]
    assert all(p.endswith("%") for p in pcts) and values == sorted(values, reverse=True) and values[0] > 50
    assert "red_circle.png" in browser.find_element(By.CSS_SELECTOR, "#results h2").text

    # drag and drop: a File dropped on the drop zone, with a template typed in
    data = base64.b64encode(EXAMPLES["blue cross"].read_bytes()).decode()
    browser.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));""",
        data,
    )
    type_into(browser, "template", "a photo of a {}.")
    assert submit(browser) == "done", by_id(browser, "error").text
    assert shown_labels(browser)[0] == "blue cross"
    assert "dropped.png" in browser.find_element(By.CSS_SELECTOR, "#results h2").text

    # a template that breaks the rule: the server's message, shown as it says it
    type_into(browser, "template", "a photo of a {} {}")
    assert submit(browser) == "error"
    assert by_id(browser, "error").text.startswith("400: template must contain exactly one")
    assert severe_console_messages(browser) == []  # e.g. no inline code refused by the CSP


@needs_chromium
def test_multi_label_checkbox_and_answers(browser, server):
    open_page(browser, server)
    by_id(browser, "file").send_keys(str(EXAMPLES["green star"]))
    type_into(browser, "labels", "green star, red circle")
    by_id(browser, "multi").click()
    assert submit(browser) == "error"  # the demo bundle alone has no thresholds: the server's message, as is
    assert by_id(browser, "error").text.startswith("400: multi-label scoring needs calibrated thresholds")

    from selenium.webdriver.common.by import By

    def answer_with(status: int, body: str) -> None:  # every shape of answer, stubbed in the page
        browser.execute_script(
            """const [status, body] = arguments;
            window.sent = null;
            window.fetch = async (url, init) => {
              window.sent = [...init.body.entries()].filter(([k]) => k !== "files");
              return new Response(body, {status, headers: {"content-type": "application/json"}});
            };""",
            status,
            body,
        )

    answer_with(
        200,
        '[{"image": "g.png", "labels": ["green star", "red circle", "star"], "scores": [0.9, 0.1, 0.7],'
        ' "present": ["green star", "star"]}]',
    )
    assert submit(browser) == "done"
    assert ["multi_label", "true"] in browser.execute_script("return window.sent")
    rows = browser.find_elements(By.CSS_SELECTOR, "#results .row")
    assert [r.find_element(By.CLASS_NAME, "label").text for r in rows] == ["green star", "star", "red circle"]
    assert ["present" in r.get_attribute("class") for r in rows] == [True, True, False]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .marker")) == 3  # the 0.5 mark on every bar
    assert by_id(browser, "summary").text.endswith("green star, star")

    answer_with(200, '[{"image": "g.png", "labels": ["a", "b"], "scores": [0.2, 0.4], "present": []}]')
    assert submit(browser) == "done"
    assert by_id(browser, "none").text == "none of these labels"

    message = "multi_label needs thresholds: this server has none loaded"
    answer_with(
        400, f'{{"message": "{message}", "error": {{"code": "no_thresholds", "message": "{message}", "row": null}}}}'
    )
    assert submit(browser) == "error"
    assert by_id(browser, "error").text == f"400: {message}"


@needs_chromium
def test_page_asks_for_the_key_and_sends_it(browser, key_server):
    open_page(browser, key_server)
    assert by_id(browser, "key-status").text == "this server needs an API key: enter it here"
    assert "ask" in by_id(browser, "keybar").get_attribute("class")
    assert by_id(browser, "key").get_attribute("type") == "password"
    by_id(browser, "file").send_keys(str(EXAMPLES["purple circle"]))
    type_into(browser, "labels", LABELS)
    assert submit(browser) == "error"
    assert by_id(browser, "error").text == "401: missing or wrong API key"
    assert by_id(browser, "results").text == ""  # the error, not the "Choose an image..." placeholder under it
    assert not [e for e in browser.get_log("browser") if "favicon" in e["message"]]  # no /favicon.ico 401

    type_into(browser, "key", "not-the-key")
    by_id(browser, "key-use").click()
    wait_for(browser, lambda d: by_id(d, "key-status").text.startswith("wrong key"))
    assert by_id(browser, "key-status").text == "wrong key: missing or wrong API key"
    assert submit(browser) == "error" and by_id(browser, "error").text == "401: missing or wrong API key"

    type_into(browser, "key", KEY)
    by_id(browser, "key-use").click()
    wait_for(browser, lambda d: by_id(d, "key-status").text == "key in use for this tab")
    assert submit(browser) == "done", by_id(browser, "error").text
    assert shown_labels(browser)[0] == "purple circle"
    assert by_id(browser, "error").is_displayed() is False
    # kept for this tab only, never in the address or in localStorage
    assert browser.execute_script("return sessionStorage.getItem('clipedge.apiKey')") == KEY
    assert browser.execute_script("return localStorage.length") == 0 and KEY not in browser.current_url
    by_id(browser, "key-forget").click()
    wait_for(browser, lambda d: "needs an API key" in by_id(d, "key-status").text)
    assert browser.execute_script("return sessionStorage.getItem('clipedge.apiKey')") is None


@pytest.fixture(scope="module")
def pack_server(tmp_path_factory):
    """The demo as an edge pack of its labels CLASSES[0::2] with thresholds calibrated on generated shapes."""
    from clipedge.calibrate import calibrate
    from clipedge.options import LoadOptions
    from clipedge.pack import make_pack
    from clipedge_export.shapes import CLASSES, write_image_folder

    root = tmp_path_factory.mktemp("multi")
    shapes = write_image_folder(root / "cal", per_class=12, seed=3000)
    cal = calibrate(LoadOptions(str(DEMO), precision="int8", provider="cpu"), shapes, list(CLASSES[0::2]))
    with ServerProcess(make_pack(DEMO, root / "pack", "int8", label_embeddings=cal.labels)) as s:
        yield s


@needs_chromium
def test_multi_label_on_a_calibrated_pack_can_say_none(browser, pack_server):
    open_page(browser, pack_server)
    by_id(browser, "multi").click()  # no labels typed: the pack's 15
    by_id(browser, "file").send_keys(str(EXAMPLES["purple circle"]))  # not one of the pack's labels
    assert submit(browser) == "done", by_id(browser, "error").text
    assert by_id(browser, "none").text == "none of these labels"
    assert len(shown_labels(browser)) == 15
    by_id(browser, "file").send_keys(str(EXAMPLES["red circle"]))
    assert submit(browser) == "done", by_id(browser, "error").text
    assert shown_labels(browser)[0] == "red circle"
    assert by_id(browser, "summary").text.endswith("red circle")


@needs_chromium
def test_pasted_private_url_is_refused_with_the_servers_message(browser, server):
    hits: list[str] = []

    class Counting(Handler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    images = ImageServer()
    images.httpd.RequestHandlerClass = Counting
    with images:
        open_page(browser, server)
        by_id(browser, "file").send_keys(str(EXAMPLES["red circle"]))
        type_into(browser, "url", images.url + "/img.png")  # typing a URL drops the picked file
        type_into(browser, "labels", "blue cross, red circle")
        assert submit(browser) == "error"
        text = by_id(browser, "error").text
        assert text.startswith("400: The provided image string cannot be decoded")
        assert "non-public address" in text and "--allow-private-urls" in text
        assert hits == []  # refused before any connection


# -- the route and the /classify url field, over HTTP ------------------------------------------------------------
def test_ui_is_a_static_shell_with_strict_headers(key_server):
    r = httpx.get(key_server.url + "/ui")  # open without the key: the page holds no data
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]{16,})'", csp).group(1)
    assert "default-src 'self'" in csp and "img-src 'self' data: blob:" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-eval" not in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    assert r.text.replace(nonce, NONCE) == PAGE.read_text()  # the shipped bytes, only the nonce filled in
    assert httpx.get(key_server.url + "/ui").headers["content-security-policy"] != csp  # a fresh nonce each time
    assert KEY not in r.text
    assert httpx.post(key_server.url + "/ui").status_code == 401  # only GET is open
    assert httpx.get(key_server.url + "/swagger.json").status_code == 401  # the API stays behind the key


def test_page_loads_nothing_from_outside():
    html = PAGE.read_text()
    markup = re.sub(r"(<script\b[^>]*>).*?</script>|(<style\b[^>]*>).*?</style>", r"\1\2", html, flags=re.S)
    icon = '<link rel="icon" href="data:,">'  # an empty inline icon: the browser asks for no /favicon.ico
    assert markup.count(icon) == 1
    markup = markup.replace(icon, "")
    assert not re.search(r"<[^>]*\s(src|href|action|poster|srcset|data)\s*=", markup, re.I)  # nothing linked
    assert not re.search(r"\burl\(|@import", html, re.I)  # no stylesheet or font from anywhere
    assert re.findall(r"https?://[^\s\"'<]*", html) == ["https://example.com/picture.jpg"]  # a placeholder only
    assert re.findall(r"fetch\(\"([^\"]+)\"", html) == ["swagger.json", "classify", "ready"]  # relative: this server


def test_classify_url_field(server):
    png = EXAMPLES["red circle"].read_bytes()
    files = [("files", ("red_circle.png", png, "image/png"))]
    url = server.url + "/img.png"

    def classify(data, files=None):
        return httpx.post(server.url + "/classify", data={"labels": "red circle, blue cross", **data}, files=files)

    r = classify({"url": url}, files)
    assert r.status_code == 400 and r.json()["message"] == "give image files or one url, not both"
    r = classify({})
    assert r.status_code == 400 and r.json()["error"] == {
        "code": "invalid_input",
        "message": "no image given",
        "row": None,
    }
    r = classify({"url": "  "})
    assert r.status_code == 400 and r.json()["message"] == "no image given"
    for not_a_url in ("/etc/passwd", base64.b64encode(png).decode(), "ftp://127.0.0.1/x.png", "x" * 3000):
        r = classify({"url": not_a_url})
        assert r.status_code == 400 and r.json()["message"].startswith("url must be an http or https URL")
        assert not_a_url[:30] not in r.text
    r = classify({"url": url + "?token=abc"})  # the server's URL rules: no private addresses here
    assert r.status_code == 400 and "non-public address" in r.json()["message"] and "token=abc" not in r.text
    r = classify({"url": ""}, files)  # an empty url field with files is files alone
    assert r.status_code == 200 and r.json()[0]["image"] == "red_circle.png"


def test_classify_url_fetched_when_private_urls_are_allowed():
    with ImageServer() as images, ServerProcess(DEMO, "--allow-private-urls") as s:
        r = httpx.post(
            s.url + "/classify",
            data={"labels": "blue cross, red circle", "url": images.url + "/img.png?sig=secret"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        row = r.json()[0]
        assert row["image"] == images.url + "/img.png" and row["labels"] == ["blue cross", "red circle"]
        r = httpx.post(s.url + "/classify", data={"labels": "a, b", "url": images.url + "/notfound"}, timeout=30)
        assert r.status_code == 400 and "HTTP 404" in r.json()["message"]
