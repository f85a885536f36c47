"""Letter rendering speed on one core: the agent's renderer against stdlib EmailMessage.

Prints JSON lines; the last one is the headline:
{"bench": "render", "letters_per_s": N, "bytes": avg_size, ...}
The letter: multipart/alternative, quoted-printable, ten template tags, about 2 KB.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import sys
import time
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker_agent.render import _HTML_ENV, _TEXT_ENV, Renderer  # noqa: E402

PARAGRAPH = (
    "Our autumn range has arrived and we picked a few things we think you will like. "
    "Every order this month ships free, and members collect double points on each purchase. "
)
TEXT = (
    "Hello {{ name }},\n\n"
    "Thank you for being with {{ company }} since {{ since }}. "
    + PARAGRAPH * 2
    + "\n\nYour plan: {{ plan }}. Points: {{ points }}. Last order: {{ last_order }}. Member: {{ member_id }}.\n"
    "Nearest shop: {{ city }}.\n\n"
    + PARAGRAPH
    + "\n\nThis letter went to {{ email }}. Unsubscribe: {{ unsubscribe_url }}\n"
)
HTML = (
    "<html><body><p>Hello {{ name }},</p>\n"
    "<p>Thank you for being with <b>{{ company }}</b> since {{ since }}. "
    + PARAGRAPH * 2
    + "</p>\n<p>Your plan: {{ plan }}. Points: {{ points }}. Last order: {{ last_order }}.</p>\n"
    "<p>Nearest shop: {{ city }}. Member: {{ member_id }}.</p>\n"
    "<p>This letter went to {{ email }}. <a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>\n"
)
CAMPAIGN = {
    "id": 1, "subject": "{{ name }}, your {{ plan }} news", "from_email": "news@example.com",
    "from_name": "Example Shop", "reply_to": None, "text": TEXT, "html": HTML,
    "encoding": "quoted-printable", "message_id_domain": "example.com",
    "bounce_domain": "bounces.example.com", "unsubscribe_url": "https://example.com/u/",
}


def recipient(i: int) -> dict:
    return {
        "id": i, "email": f"user{i}@example.org", "source_ip": "127.0.0.2", "token": f"{i}-3f2a9c1b7e",
        "fields": {"name": f"Ann {i}", "company": "Example Shop", "since": "2019", "plan": "Gold",
                   "points": str(1000 + i), "last_order": "2024-09-30", "city": "Oslo", "member_id": f"M{i:06d}"},
    }


def run(fn, seconds: float) -> tuple[float, int, int]:
    """Letters per second, letters built and average size over about ``seconds``."""
    recipients = [recipient(i) for i in range(1000)]
    n = size = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for r in recipients:
            size += len(fn(r))
        n += len(recipients)
        if time.perf_counter() >= deadline:
            break
    return n / (time.perf_counter() - start), n, size // n


def tags() -> int:
    """Distinct template variables the letter uses."""
    from jinja2 import meta

    return len(set().union(*(meta.find_undeclared_variables(_TEXT_ENV.parse(t)) for t in (CAMPAIGN["subject"], TEXT, HTML))))


def check(data: bytes) -> None:
    """The benchmark letter is a real one: it parses and carries the personalised text."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative" and not message.defects
    assert "Hello Ann 7," in message.get_body(("plain",)).get_content()
    assert "Member: M000007." in message.get_body(("html",)).get_content()


def agent_letter(renderer: Renderer):
    return lambda r: renderer.render(CAMPAIGN, r).data


def stdlib_letter():
    subject, text, html = (_TEXT_ENV.from_string(CAMPAIGN["subject"]), _TEXT_ENV.from_string(TEXT),
                           _HTML_ENV.from_string(HTML))

    def build(r: dict) -> bytes:
        ctx = dict(r["fields"], email=r["email"], unsubscribe_url=CAMPAIGN["unsubscribe_url"] + r["token"])
        msg = EmailMessage()
        msg["From"] = formataddr((CAMPAIGN["from_name"], CAMPAIGN["from_email"]))
        msg["To"] = r["email"]
        msg["Subject"] = subject.render(ctx)
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(domain=CAMPAIGN["message_id_domain"])
        msg["List-Unsubscribe"] = f"<{ctx['unsubscribe_url']}>"
        msg["X-Mailfleet-Source-IP"] = r["source_ip"]
        msg.set_content(text.render(ctx), cte="quoted-printable")
        msg.add_alternative(html.render(ctx), subtype="html", cte="quoted-printable")
        return msg.as_bytes()

    return build


def main() -> None:
    seconds = float(os.environ.get("BENCH_SECONDS", "3"))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    base_rate, base_n, base_size = run(stdlib_letter(), seconds)
    print(json.dumps({"bench": "render-stdlib-emailmessage", "letters_per_s": round(base_rate),
                      "letters": base_n, "bytes": base_size}), flush=True)
    check(Renderer().render(CAMPAIGN, recipient(7)).data)
    rate, n, size = run(agent_letter(Renderer()), seconds)
    print(json.dumps({
        "bench": "render", "letters_per_s": round(rate), "bytes": size, "letters": n,
        "encoding": "quoted-printable", "parts": "multipart/alternative", "tags": tags(), "cores": 1,
        "baseline_emailmessage_per_s": round(base_rate), "speedup": round(rate / base_rate, 1),
        "target_per_s": 5000, "meets_target": rate >= 5000,
    }), flush=True)


if __name__ == "__main__":
    main()
