"""Masked links and the open pixel in letters: no login, the signed token is the proof.

`GET /c/<token>` counts a click and redirects (302) to the link's URL; `GET /o/<token>` counts an
open and answers a 1×1 GIF. HEAD (link checkers, scanners) gets the same answer uncounted. A token
that is not genuine gets the 404 page and no redirect.

Clicks come in bursts when a campaign lands, so a genuine token is answered by `FastPath`, a WSGI
wrapper in front of Flask's routing and request machinery (which cost twice what counting a click
does: bench/clicks.py); it calls the same services in an app context. Anything it does not answer
— a token that is not genuine, another method — goes on to the routes below, which give the 404
page (or 405).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable

from flask import Blueprint, Flask, Response, abort, current_app, redirect, request
from werkzeug.urls import iri_to_uri

from ...services.tracking import click, open_pixel

bp = Blueprint("tracking", __name__)

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private", "Pragma": "no-cache",
            "Expires": "0"}


@bp.get("/c/<token>")
def click_link(token: str):
    url = click(current_app.config["SECRET_KEY"], token, count=request.method == "GET", links=_links(current_app))
    if url is None:
        abort(404)
    response = redirect(url, 302)
    response.headers.update(NO_CACHE)
    return response


def _links(app: Flask) -> dict:
    """The app's memory of started campaigns' links (services.tracking.click)."""
    return app.extensions.setdefault("mailfleet_tracking_links", {})


@bp.get("/o/<token>")
def open_letter(token: str):
    if not open_pixel(current_app.config["SECRET_KEY"], token, count=request.method == "GET"):
        abort(404)
    return Response(GIF, mimetype="image/gif", headers=NO_CACHE)


class FastPath:
    """`app.wsgi_app` wrapper answering genuine /c/ and /o/ tokens (GET, HEAD) without Flask's routing;
    the same answers as the routes above, with the headers every panel response carries."""

    COMMON = [(name, value) for name, value in NO_CACHE.items()] + [
        ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin")]

    def __init__(self, app: Flask, wsgi_app: Callable) -> None:
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD")
        if path[:3] in ("/c/", "/o/") and method in ("GET", "HEAD") and "/" not in path[3:]:
            count = method == "GET"
            with self.app.app_context():
                secret = self.app.config["SECRET_KEY"]
                if path[1] == "c":
                    url = click(secret, path[3:], count=count, links=_links(self.app))
                    if url is not None:
                        location = url if url.isascii() else iri_to_uri(url)
                        start_response("302 FOUND", [("Location", location), ("Content-Length", "0"), *self.COMMON])
                        return [b""]
                elif open_pixel(secret, path[3:], count=count):
                    start_response("200 OK", [("Content-Type", "image/gif"), ("Content-Length", str(len(GIF))),
                                              *self.COMMON])
                    return [GIF if count else b""]
        return self.wsgi_app(environ, start_response)
