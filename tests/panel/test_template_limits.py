"""Templates cannot hurt the panel (issue 12, point 2): saving a template that cannot be rendered
safely is refused naming its line, quickly, by the web form and the API; a preview renders in a
separate, limited process, so a template past a limit answers with a clear 422 and the next preview
works, and the panel's own memory stays small (measured on a real gunicorn process)."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from devserver.ports import free_port, wait_listening
from panel.extensions import db
from panel.models import Campaign
from tests.template_bombs import BOMBS, DATA_LOOPS

from tests.panel.conftest import PASSWORD, SECRET

REPO = Path(__file__).resolve().parents[2]
BYE = "\nUnsubscribe: {{ unsubscribe_url }}\n"
PEOPLE = [{"email": "ann@example.org", "name": "Ann", "n": "3"},
          {"email": "bob@example.org", "name": "Bob", "n": "100000"}]


def body(line: str) -> str:
    return "Hello {{ name }},\n" + line + BYE


def errors(response) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<p class="error">(.*?)</p>', response.get_data(as_text=True))]


@pytest.fixture
def people(seed, alice) -> int:
    seed.server(alice)
    return seed.list(alice, "People", PEOPLE)


def form(list_id: int, text: str) -> dict:
    return {"name": "Bomb", "subject": "Hi {{ name }}", "from_email": "news@example.com", "from_name": "",
            "reply_to": "", "format": "plain", "text": text, "html": "", "encoding": "quoted-printable",
            "lists": [list_id], "exclude_lists": []}


@pytest.mark.parametrize("name", BOMBS)
def test_the_web_form_refuses_a_template_past_a_limit_naming_the_line(as_alice, seed, people, name):
    line, limit = BOMBS[name]
    start = time.perf_counter()
    response = as_alice.post("/campaigns/new", form(people, body(line)))
    assert time.perf_counter() - start < 1.0
    assert response.status_code == 400
    (problem,) = errors(response)
    assert problem.startswith("line 2: ") and limit in problem, problem
    assert seed.query(lambda s: s.scalars(select(Campaign)).all()) == []


@pytest.mark.parametrize("name", BOMBS)
def test_the_api_refuses_a_template_past_a_limit_naming_the_line(client, seed, alice, people, name):
    line, limit = BOMBS[name]
    token = seed.token(alice)
    start = time.perf_counter()
    response = client.post("/api/v1/campaigns", headers={"Authorization": f"Bearer {token}"}, json={
        "name": "Bomb", "subject": "Hi", "from_email": "news@example.com", "lists": [people], "html": body(line)})
    assert time.perf_counter() - start < 1.0
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert "html: line 2: " in message and limit in message, message


def test_ordinary_loops_and_arithmetic_still_save(as_alice, people):
    text = body("{% for a in range(300) %}{{ a * 2 }}{% endfor %}{{ 2**100 }} {{ name * 3 }} {{ '-' * 72 }}")
    response = as_alice.post("/campaigns/new", form(people, text))
    assert response.status_code == 302, errors(response)


def _stored(app, campaign_id: int, text: str) -> None:
    """A template stored behind the save check (as by a panel older than it): the preview must cope."""
    with app.app_context():
        db.session.get(Campaign, campaign_id).text = text
        db.session.commit()


@pytest.mark.parametrize("name", BOMBS)
def test_a_stored_template_past_a_limit_previews_as_a_clear_error(as_alice, app, seed, alice, people, name):
    line, limit = BOMBS[name]
    campaign_id = seed.campaign(alice, [people])
    _stored(app, campaign_id, body(line))
    start = time.perf_counter()
    response = as_alice.get(f"/campaigns/{campaign_id}/preview")
    assert time.perf_counter() - start < 1.0
    assert response.status_code == 422
    page = html.unescape(response.get_data(as_text=True))
    assert "The letter cannot be built: text template, line 2: " in page and limit in page
    _stored(app, campaign_id, body("{{ name }} is fine"))
    response = as_alice.get(f"/campaigns/{campaign_id}/preview")
    assert response.status_code == 200 and "Ann is fine" in html.unescape(response.get_data(as_text=True))


def test_a_field_that_asks_for_too_many_loops_fails_only_its_preview(as_alice, seed, alice, people):
    campaign_id = seed.campaign(alice, [people], text=body(DATA_LOOPS))  # passes the save check
    response = as_alice.get(f"/campaigns/{campaign_id}/preview?email=bob@example.org")
    assert response.status_code == 422
    assert "line 2: the template repeats loops more than 100,000 times" in html.unescape(response.get_data(as_text=True))
    response = as_alice.get(f"/campaigns/{campaign_id}/preview")
    assert response.status_code == 200 and "xxxxxxxxx" in response.get_data(as_text=True)


def _render_children() -> list[psutil.Process]:
    """The preview's render processes: children of the fork server this test process started."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "worker_agent.jail" in " ".join(child.parent().cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_a_killed_render_process_gives_a_clear_error_and_the_next_preview_works(as_alice, app, seed, alice, people):
    burn = '{% set big = "x" * 1000000 %}{% for a in range(100000) %}{% if "y" in big %}!{% endif %}{% endfor %}'
    campaign_id = seed.campaign(alice, [people])
    as_alice.get(f"/campaigns/{campaign_id}/preview")  # the fork server is running
    _stored(app, campaign_id, body(burn))
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.update(r=as_alice.get(f"/campaigns/{campaign_id}/preview")))
    thread.start()
    deadline = time.monotonic() + 5
    while not _render_children() and time.monotonic() < deadline:
        time.sleep(0.01)
    for child in _render_children():
        child.send_signal(signal.SIGKILL)
    thread.join(10)
    response = answer["r"]
    assert response.status_code == 422
    assert "The letter cannot be built: the renderer stopped" in html.unescape(response.get_data(as_text=True))
    _stored(app, campaign_id, body("{{ name }} again"))
    response = as_alice.get(f"/campaigns/{campaign_id}/preview")
    assert response.status_code == 200 and "Ann again" in response.get_data(as_text=True)


# -- the panel as a real process: its memory ---------------------------------------------------

def _vm(pid: int, key: str) -> int:
    """A /proc/PID/status figure in KiB (VmRSS now, VmHWM the peak)."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(key + ":"):
            return int(row.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def test_the_panels_memory_stays_small_under_every_payload(database_url, seed, alice, people, tmp_path):
    token = seed.token(alice)
    stored = seed.campaign(alice, [people])
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database_url, MAILFLEET_SECRET_KEY=SECRET,
               MAILFLEET_PUBLIC_URL="http://panel.example.com", MAILFLEET_BOUNCE_DOMAIN="bounces.example.com",
               MAILFLEET_INSTANCE_PATH=str(tmp_path / "instance"))
    log = open(tmp_path / "gunicorn.log", "wb")
    # A guard for the machine, not the measure: were the panel to try a 10 GB string, it fails at 4 GB.
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "4", "-b", f"127.0.0.1:{port}",
         "panel:create_app()"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_AS, (4 << 30, 4 << 30)))
    try:
        wait_listening(server, port, "the panel under gunicorn", hint=f" (see {tmp_path / 'gunicorn.log'})")
        base = f"http://127.0.0.1:{port}"

        def call(method: str, path: str, data: dict | None = None) -> tuple[int, str]:
            request = urllib.request.Request(base + path, method=method, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                data=json.dumps(data).encode() if data is not None else None)
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    return reply.status, reply.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        # An ordinary campaign first: it starts the worker's render fork server (a one-off, ~0.1-0.3 s).
        status, text = call("POST", "/api/v1/campaigns", {
            "name": "fine", "subject": "Hi", "from_email": "news@example.com", "lists": [people], "text": body("ok")})
        assert status == 201, text
        (worker,) = psutil.Process(server.pid).children()  # gunicorn's one worker, which answered
        for name, (line, limit) in BOMBS.items():
            start = time.perf_counter()
            status, text = call("POST", "/api/v1/campaigns", {
                "name": name, "subject": "Hi", "from_email": "news@example.com", "lists": [people], "text": body(line)})
            assert time.perf_counter() - start < 1.0, name
            assert status == 400 and limit in text, (name, status, text[:300])

        # the preview, logged in through the login form as a browser would
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        page = opener.open(base + "/login", timeout=30).read().decode()
        csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
        opener.open(urllib.request.Request(base + "/login", data=urllib.parse.urlencode(
            {"email": "alice@example.com", "password": PASSWORD, "csrf_token": csrf}).encode()), timeout=30).read()
        for name, (line, limit) in BOMBS.items():
            _stored(seed.app, stored, body(line))
            start = time.perf_counter()
            with pytest.raises(urllib.error.HTTPError) as caught:
                opener.open(base + f"/campaigns/{stored}/preview", timeout=30)
            assert time.perf_counter() - start < 1.0, name
            assert caught.value.code == 422 and limit in html.unescape(caught.value.read().decode()), name
        peak = _vm(worker.pid, "VmHWM")
        assert peak < 200 * 1024, f"the panel's worker peaked at {peak // 1024} MB"
        assert "Traceback" not in (tmp_path / "gunicorn.log").read_text(errors="replace")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
