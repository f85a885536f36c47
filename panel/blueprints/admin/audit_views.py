"""The audit log page (/admin/audit): search, page back, download as CSV (on the `admin` blueprint)."""

from __future__ import annotations

from flask import Response, render_template, request, stream_with_context

from ...services import audit
from . import bp


def _filters() -> tuple[str, str, int | None]:
    before = request.args.get("before", "")
    return (request.args.get("q", "")[:200], request.args.get("action", "")[:40],
            int(before) if before.isdigit() and len(before) < 12 else None)


@bp.get("/audit")
def audit_log():
    q, action, before = _filters()
    entries = list(audit.search(q, action, before))
    older = entries[-1].id if len(entries) == audit.PAGE_SIZE else None
    return render_template("admin/audit.html", entries=entries, q=q, action=action, older=older,
                           actions=audit.known_actions())


@bp.get("/audit.csv")
def audit_csv():
    q, action, _ = _filters()
    return Response(stream_with_context(audit.csv_lines(q, action)), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="audit-log.csv"'})
