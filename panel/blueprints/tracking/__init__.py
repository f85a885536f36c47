"""Masked links and the open pixel in letters: no login, the signed token is the proof.

`GET /c/<token>` counts a click and redirects (302) to the link's URL; `GET /o/<token>` counts an
open and answers a 1×1 GIF. HEAD (link checkers, scanners) gets the same answer uncounted. A token
that is not genuine, or is asked of a host that is not its campaign's (services/tracking_hosts),
gets the 404 page and no redirect; an address that sent too many of those gets 429
(services/click_limits), as on /u/.

Clicks come in bursts when a campaign lands, so a genuine token is answered by `FastPath`, a WSGI
wrapper in front of Flask's routing and request machinery (which cost twice what counting a click
does: bench/clicks.py); it calls the same services in an app context. Anything it does not answer
— a refused token, another method — goes on to the routes below, which give the 404 page (or 429,
or 405).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import NoReturn

from flask import Blueprint, Flask, Response, abort, current_app, redirect, render_template, request
from werkzeug.urls import iri_to_uri

from ...services.tracking import Visit, click, open_pixel, tracking_state

bp = Blueprint("tracking", __name__)

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private", "Pragma": "no-cache",
            "Expires": "0"}
RETRY_AFTER = "60"


def refuse_token() -> NoReturn:
    """The answer to a refused token (here and on /u/): the 404 page, or 429 once the client's
    address has sent too many refused tokens (guessing)."""
    if tracking_state(current_app).limits.refused(request.remote_addr):
        page = render_template("errors/error.html", code=429, title="Too many requests",
                               message="Too many links that lead nowhere came from your address. "
                                       "Wait a minute, then open the link from the letter again.")
        abort(Response(page, 429, {"Retry-After": RETRY_AFTER, **NO_CACHE}, mimetype="text/html"))
    abort(404)


def _visit() -> Visit:
    return Visit(request.environ.get("HTTP_HOST"), request.remote_addr, count=request.method == "GET")


@bp.get("/c/<token>")
def click_link(token: str):
    url = click(current_app.config["SECRET_KEY"], token, _visit(), tracking_state(current_app))
    if url is None:
        refuse_token()
    response = redirect(url, 302)
    response.headers.update(NO_CACHE)
    return response


@bp.get("/o/<token>")
def open_letter(token: str):
    if not open_pixel(current_app.config["SECRET_KEY"], token, _visit(), tracking_state(current_app)):
        refuse_token()
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
            visit = Visit(environ.get("HTTP_HOST"), environ.get("REMOTE_ADDR"), count=method == "GET")
            with self.app.app_context():
                secret = self.app.config["SECRET_KEY"]
                state = tracking_state(self.app)
                if path[1] == "c":
                    url = click(secret, path[3:], visit, state)
                    if url is not None:
                        location = url if url.isascii() else iri_to_uri(url)
                        start_response("302 FOUND", [("Location", location), ("Content-Length", "0"), *self.COMMON])
                        return [b""]
                elif open_pixel(secret, path[3:], visit, state):
                    start_response("200 OK", [("Content-Type", "image/gif"), ("Content-Length", str(len(GIF))),
                                              *self.COMMON])
                    return [GIF if visit.count else b""]
        return self.wsgi_app(environ, start_response)
