"""One blueprint per area; each keeps its templates in a folder of the same name.

Also here: the error pages (JSON under /api/, HTML elsewhere) and the security headers
every response carries.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from ..extensions import csrf

# Letters shown in the preview use inline styles and remote images; scripts only from us.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: https: http:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'self'"
)

API_PREFIX = "/api/"


def register_all(app: Flask) -> None:
    from . import admin, api, auth, campaigns, domains, lists, servers, suppressions, tracking, unsubscribe

    auth.init_login()
    app.register_blueprint(auth.bp)
    app.register_blueprint(lists.bp)
    app.register_blueprint(campaigns.bp)
    app.register_blueprint(servers.bp)
    app.register_blueprint(suppressions.bp)
    app.register_blueprint(domains.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(unsubscribe.bp)
    app.register_blueprint(tracking.bp)
    app.register_blueprint(api.bp)
    csrf.exempt(api.bp)  # bearer tokens, no cookies: nothing for a forged form to ride on
    csrf.exempt(unsubscribe.bp)  # the token in the URL is the proof; RFC 8058 posts carry no form token
    register_error_handlers(app)
    app.after_request(_security_headers)
    app.wsgi_app = tracking.FastPath(app, app.wsgi_app)  # genuine click and open tokens skip the routing


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    return response


_API_MESSAGES = {
    400: "the request could not be understood",
    401: "send your API token as Authorization: Bearer <token>",
    403: "you may not do that",
    404: "there is nothing at this address: check the URL and the id",
    405: "this address does not take that method: see the API documentation",
    413: "the request body is too large: send it in smaller parts",
    415: "send JSON with Content-Type: application/json",
    500: "something went wrong on the server; try again, and report it if it persists",
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        if request.path.startswith(API_PREFIX):
            return jsonify(error=error.description), 400
        message = "The form had expired or did not come from this site. Reload the page and try again."
        return render_template("errors/error.html", code=400, title="Form not accepted", message=message), 400

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        code = error.code or 500
        if request.path.startswith(API_PREFIX):
            response = jsonify(error=_API_MESSAGES.get(code, (error.description or error.name).rstrip(".")))
            response.status_code = code
            valid_methods = getattr(error, "valid_methods", None)
            if valid_methods:
                response.headers["Allow"] = ", ".join(valid_methods)
            return response
        return render_template("errors/error.html", code=code, title=error.name, message=error.description), code

    @app.errorhandler(500)
    def server_error(error: Exception):
        if request.path.startswith(API_PREFIX):
            return jsonify(error=_API_MESSAGES[500]), 500
        return render_template(
            "errors/error.html", code=500, title="Something went wrong", message=_API_MESSAGES[500].capitalize() + "."
        ), 500
