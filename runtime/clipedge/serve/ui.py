"""`GET /ui`: the try-it page, one self-contained HTML file shipped in the package (ui.html: inline CSS
and JS, no outside asset, works offline).

The page is a static shell: the same bytes for every server and every caller (only a per-response CSP
nonce is filled in), holding no configuration, model name, label or key. That is why the Guard serves it
without the API key, as it does the probes: a browser cannot send a header when it opens a URL, so the
page asks for the key itself (a password field, kept in sessionStorage for the tab) and sends it as
`Authorization: Bearer <key>` on its calls to the API routes, which stay behind the key. Everything the
page shows comes from those calls.
"""

from __future__ import annotations

import secrets
from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

NONCE = "__CSP_NONCE__"  # the placeholder in ui.html, on its <style> and <script> elements
ui_router = APIRouter()


@cache
def page() -> str:
    """The shipped page (read once)."""
    return resources.files("clipedge.serve").joinpath("ui.html").read_text(encoding="utf-8")


def csp(nonce: str) -> str:
    """Same-origin calls only; inline code only with this response's nonce; images from the page itself,
    data: and blob: (the preview of a picked file); no plugins, no framing, no form posts, no <base>."""
    return (
        f"default-src 'self'; img-src 'self' data: blob:; style-src 'nonce-{nonce}'; "
        f"script-src 'nonce-{nonce}'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


@ui_router.get("/ui", response_class=HTMLResponse, summary="the try-it page (static HTML; asks for the API key)")
async def try_it() -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    headers = {
        "Content-Security-Policy": csp(nonce),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(page().replace(NONCE, nonce), headers=headers)
