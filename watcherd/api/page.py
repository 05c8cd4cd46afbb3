"""The web page: one server-rendered shell whose small script polls the JSON API.

The shell holds no data, so nothing secret can be rendered into it; the script draws the
(already redacted) API answers with textContent only, never as HTML.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import jinja2

__all__ = ["PAGE", "PageOptions", "add_routes", "render_page"]

_HERE = Path(__file__).parent
STATIC = _HERE / "static"
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class PageOptions:
    """What the page needs to know about the daemon."""

    token_for_reads: bool  # not loopback: ask for the token before loading any data
    poll_seconds: float = 3.0


PAGE: web.AppKey[PageOptions] = web.AppKey("watcherd_page")


@functools.cache
def _env() -> jinja2.Environment:
    import jinja2  # ~20 ms of start-up otherwise; the page is rarely the first request

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    )


def render_page(options: PageOptions) -> str:
    """The page's HTML for these options."""
    return (
        _env()
        .get_template("index.html")
        .render(
            token_for_reads=options.token_for_reads,
            poll_ms=int(options.poll_seconds * 1000),
        )
    )


async def index(request: web.Request) -> web.Response:
    html = render_page(request.app[PAGE])
    return web.Response(text=html, content_type="text/html", headers=_HEADERS)


def add_routes(app: web.Application) -> None:
    """Register `/` and `/static/*`."""
    app.router.add_get("/", index, name="page")
    app.router.add_static("/static/", STATIC, name="static", append_version=False)
