"""Masked links and the open pixel in letters: no login, the signed token is the proof.

`GET /c/<token>` counts a click and redirects (302) to the link's URL; `GET /o/<token>` counts an
open and answers a 1×1 GIF. HEAD (link checkers, scanners) gets the same answer uncounted. A token
that is not genuine gets the 404 page and no redirect.
"""

from __future__ import annotations

import base64

from flask import Blueprint, Response, abort, current_app, redirect, request

from ...services.tracking import click, open_pixel

bp = Blueprint("tracking", __name__)

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private", "Pragma": "no-cache",
            "Expires": "0"}


@bp.get("/c/<token>")
def click_link(token: str):
    url = click(current_app.config["SECRET_KEY"], token, count=request.method == "GET")
    if url is None:
        abort(404)
    response = redirect(url, 302)
    response.headers.update(NO_CACHE)
    return response


@bp.get("/o/<token>")
def open_letter(token: str):
    if not open_pixel(current_app.config["SECRET_KEY"], token, count=request.method == "GET"):
        abort(404)
    return Response(GIF, mimetype="image/gif", headers=NO_CACHE)
