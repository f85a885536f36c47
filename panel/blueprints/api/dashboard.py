"""GET /api/v1/dashboard: the dashboard's figures as JSON (services/dashboard.py)."""

from __future__ import annotations

from flask import g, jsonify

from ...services.dashboard import dashboard
from . import bp


@bp.get("/dashboard")
def dashboard_figures():
    return jsonify(dashboard(g.api_user).as_json())
