"""A report's outcomes cost the database a fixed number of statements, however many letters it holds
(issue 9 point 12: the panel's CPU per letter). On PostgreSQL every statement on deliveries runs the
statement-level count triggers once, and an executemany is one statement per row: a report of
thousands of events must be a handful of statements, and leave exactly the same state and counts."""

from __future__ import annotations

from contextlib import contextmanager
import time
from datetime import datetime, timezone
from collections.abc import Iterator

from sqlalchemy import event, func, select, update

from panel.daemon.outcomes import apply_events
from panel.extensions import db
from panel.models import Campaign, Delivery, DeliveryEvent, Server, User
from panel.services.sending import start_campaign
from tests.panel.test_campaign_counts import check

PEOPLE = [{"email": f"p{n}@example.org", "name": f"P{n}"} for n in range(300)]


@contextmanager
def statements() -> Iterator[list[str]]:
    """The statements the database runs meanwhile: an executemany counts once per row, as it runs."""
    ran: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        ran.extend([statement] * (len(parameters) if executemany else 1))

    engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield ran
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_a_report_is_a_few_statements_whatever_its_size(app, seed, alice):
    list_id = seed.list(alice, "People", PEOPLE)
    server_id = seed.server(alice)
    campaign_id = seed.campaign(alice, [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        ids = list(db.session.scalars(select(Delivery.id).where(Delivery.campaign_id == campaign_id)
                                      .order_by(Delivery.id)))
        db.session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(status="queued", server_id=server_id))
        db.session.commit()
        server = db.session.get(Server, server_id)
        at = int(time.time()) - 60
        events = [{"id": i, "status": "sent", "at": at} for i in ids]
        events += [{"id": i, "status": "delivered", "code": 250, "text": "250 OK queued as x"} for i in ids[:200]]
        events += [{"id": i, "status": "deferred", "code": 451, "text": "451 4.7.1 try later"} for i in ids[200:250]]
        events += [{"id": i, "status": "failed", "code": 550, "text": "550 5.1.1 user unknown: no such user here"}
                   for i in ids[250:260]]
        with statements() as ran:
            changed = apply_events(server, events)
        db.session.commit()
        assert changed == 300
        # The 10 refusals are judged like bounces one by one (rare); the rest is a fixed few statements.
        assert len(ran) <= 5 + 4 * 10, f"{len(ran)} statements for {len(events)} events: {ran}"
        by_status = dict(db.session.execute(select(Delivery.status, func.count())
                                            .where(Delivery.campaign_id == campaign_id).group_by(Delivery.status)).all())
        assert by_status == {"delivered": 200, "deferred": 50, "failed": 10, "sent": 40}
        delivered = db.session.get(Delivery, ids[0])
        assert (delivered.code, delivered.reply) == (250, "250 OK queued as x")
        assert db.session.scalar(select(func.count()).select_from(DeliveryEvent)) == len(events)
        first = db.session.scalars(select(DeliveryEvent).where(DeliveryEvent.delivery_id == ids[0])
                                   .order_by(DeliveryEvent.id)).all()
        assert [(e.status, e.code) for e in first] == [("sent", None), ("delivered", 250)]
        assert first[0].created_at == datetime.fromtimestamp(at, timezone.utc).replace(tzinfo=None)  # the agent's time
        check(campaign_id)
        # The same report again (an ack lost): the states stay, the counts too.
        with statements() as ran:
            assert apply_events(server, events) == 50  # only the deferred ones: a deferral may follow a deferral
        db.session.commit()
        check(campaign_id)
