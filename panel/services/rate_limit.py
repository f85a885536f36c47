"""A token bucket per API token, shared by every gunicorn worker through the database.

Each request takes one token; a bucket holds at most `burst` and refills at `rate` a second. The
bucket row is changed with a compare-and-set UPDATE (WHERE the values are those read), retried
if another worker changed it in between, so two workers never both spend the same token — on
SQLite and on PostgreSQL alike, with no lock held across the request.
"""

from __future__ import annotations

import math
import time

from sqlalchemy import select, update

from ..extensions import db
from ..models import ApiRateBucket
from ..models.base import insert_unless_present

ATTEMPTS = 20


def take_token(token_id: int, rate: float, burst: float, now: float | None = None) -> float:
    """Spend one request of the token's bucket: 0.0 if allowed, else the seconds to wait."""
    for _ in range(ATTEMPTS):
        moment = time.time() if now is None else now
        db.session.execute(
            insert_unless_present(db.session, ApiRateBucket).values(token_id=token_id, tokens=float(burst), at=moment)
        )
        tokens, at = db.session.execute(
            select(ApiRateBucket.tokens, ApiRateBucket.at).where(ApiRateBucket.token_id == token_id)
        ).one()
        available = min(float(burst), tokens + max(0.0, moment - at) * rate)
        if available < 1.0:
            return max((1.0 - available) / rate, 0.001) if rate > 0 else math.inf
        changed = db.session.execute(
            update(ApiRateBucket)
            .where(ApiRateBucket.token_id == token_id, ApiRateBucket.tokens == tokens, ApiRateBucket.at == at)
            .values(tokens=available - 1.0, at=max(moment, at))
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed == 1:
            return 0.0
    return 1.0 / rate if rate > 0 else math.inf  # much contention: ask the client to come back shortly
