"""The daemon trusts no agent (issue 12, point 3): each test runs a real daemon round against a
hostile fake agent (real HTTPS, its certificate pinned like a real agent's) registered before an
honest one, and checks that the hostile one harmed nothing — no redirect followed, memory bounded,
a slow drip cut at the deadline, its error text shown short and escaped — and that the honest
server was still served in the same round."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from panel.daemon.loop import PING_TIMEOUT
from panel.daemon.provision import EventRecorder
from panel.extensions import db
from panel.models import ProvisionJob, Server, ServerEvent
from tests.panel.agents import Agents, CountingServer, daemon_round, peak_growth_mib
from tests.panel.fake_agent import ERROR_TEXT

# A daemon that does not cut a drip stays blocked in its thread until the fake agent is stopped, and
# then fails there: the test has failed already, that late failure must not fail another test.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

MEMORY_BOUND_MIB = 100  # what one hostile reply may add to the daemon's resident memory at its peak


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}  # the fake agents listen on loopback


@pytest.fixture
def redirect_target() -> Iterator[CountingServer]:
    target = CountingServer()
    yield target
    target.close()


@pytest.fixture(scope="session")
def zlib_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zlib of a reply envelope whose data is 1 GB of zeros: about 1 MB (made once per session)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zlib"
    deflate = zlib.compressobj(9)
    chunk = b"0" * (16 << 20)
    with open(path, "wb") as out:
        out.write(deflate.compress(b'{"path":"/v1/ping","nonce":"n","reply_to":"r","data":"'))
        for _ in range(1024 // 16):
            out.write(deflate.compress(chunk))
        out.write(deflate.compress(b'"}') + deflate.flush())
    return path


class Round:
    """One daemon round over a hostile server (first) and an honest one (after it)."""

    def __init__(self, app, seed, alice: int, agents: Agents, mode: str, **extra: str) -> None:
        self.app, self.seed = app, seed
        self.hostile_id = agents.start(mode, **extra).register(app, alice, "hostile")
        self.honest_id = agents.start("honest").register(app, alice, "honest")

    def run(self) -> None:
        daemon_round(self.app)

    def server(self, server_id: int) -> Server:
        return self.seed.get(Server, server_id)

    def events(self, server_id: int) -> list[tuple[str, str]]:
        return self.seed.query(lambda s: [(e.kind, e.message) for e in s.scalars(
            select(ServerEvent).where(ServerEvent.server_id == server_id).order_by(ServerEvent.id))])

    def assert_honest_served(self) -> None:
        assert self.server(self.honest_id).status == "online", "the daemon did not go on to the next server"


@pytest.mark.parametrize("mode", ["redirect", "redirect-huge"])
def test_a_redirect_is_never_followed(app, seed, alice, agents, redirect_target, mode):
    """Neither followed nor read: a redirect's body of 100 MB costs the daemon nothing either."""
    round_ = Round(app, seed, alice, agents, mode, target=redirect_target.url)
    growth = peak_growth_mib(round_.run)
    assert redirect_target.hits == []
    assert growth < MEMORY_BOUND_MIB, f"the daemon's memory grew by {growth:.0f} MiB on a redirect"
    hostile = round_.server(round_.hostile_id)
    assert hostile.status == "offline"
    assert "redirect" in hostile.last_error and "must not" in hostile.last_error
    round_.assert_honest_served()


@pytest.mark.parametrize("mode", ["huge", "huge-declared"])
def test_a_100_mb_reply_is_cut_and_memory_stays_bounded(app, seed, alice, agents, mode):
    round_ = Round(app, seed, alice, agents, mode)
    growth = peak_growth_mib(round_.run)
    assert growth < MEMORY_BOUND_MIB, f"the daemon's memory grew by {growth:.0f} MiB reading a hostile reply"
    hostile = round_.server(round_.hostile_id)
    assert hostile.status == "offline"
    assert "larger than 16 MiB" in hostile.last_error, hostile.last_error
    round_.assert_honest_served()


def test_a_zlib_bomb_is_refused_without_inflating_it(app, seed, alice, agents, zlib_bomb):
    round_ = Round(app, seed, alice, agents, "bomb", bomb_zlib=str(zlib_bomb))
    started = time.monotonic()
    growth = peak_growth_mib(round_.run)
    assert growth < MEMORY_BOUND_MIB, f"the daemon's memory grew by {growth:.0f} MiB opening a zlib bomb"
    assert time.monotonic() - started < 10
    hostile = round_.server(round_.hostile_id)
    assert hostile.status == "offline"
    assert "inflates to more than 32 MiB" in hostile.last_error, hostile.last_error
    round_.assert_honest_served()


@pytest.mark.parametrize(("mode", "refusal"), [("many-values", "holds more than 200000 JSON values"),
                                               ("deep", "nests JSON too deeply")])
def test_json_that_would_swell_or_nest_without_end_is_refused(app, seed, alice, agents, mode, refusal):
    """Small when sealed, but 3 million values would be some 250 MB of Python lists; 100,000 levels
    of nesting would end the round with a RecursionError."""
    round_ = Round(app, seed, alice, agents, mode)
    growth = peak_growth_mib(round_.run)
    assert growth < MEMORY_BOUND_MIB, f"the daemon's memory grew by {growth:.0f} MiB parsing a reply"
    hostile = round_.server(round_.hostile_id)
    assert hostile.status == "offline"
    assert refusal in hostile.last_error, hostile.last_error
    round_.assert_honest_served()


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_reply_dripping_a_byte_a_second_is_cut_at_the_deadline(app, seed, alice, agents, where):
    round_ = Round(app, seed, alice, agents, f"drip-{where}")
    finished = threading.Event()

    def run() -> None:
        round_.run()
        finished.set()

    started = time.monotonic()
    threading.Thread(target=run, daemon=True).start()
    # The ping's deadline is PING_TIMEOUT; a round that waits for the whole drip takes 10 minutes.
    assert finished.wait(PING_TIMEOUT + 5), "the daemon is still reading a reply that drips a byte a second"
    assert time.monotonic() - started >= PING_TIMEOUT - 0.5
    hostile = round_.server(round_.hostile_id)
    assert hostile.status == "offline"
    assert f"no complete answer within {PING_TIMEOUT:g} s" in hostile.last_error, hostile.last_error
    round_.assert_honest_served()


@pytest.mark.parametrize("mode", ["error", "refusal"])
def test_an_agents_error_text_is_shown_short_and_escaped(app, seed, alice, agents, as_alice, mode):
    """A sealed 400 whose error is HTML, a terminal escape, a NUL and 1 MB (or the same text as a
    plain 403): the panel keeps a short excerpt without control characters, and the server's page
    shows it escaped."""
    round_ = Round(app, seed, alice, agents, mode)
    round_.run()
    hostile = round_.server(round_.hostile_id)
    assert hostile.status == "offline"
    stored = [hostile.last_error] + [message for _, message in round_.events(round_.hostile_id)]
    for text in stored:
        assert len(text) <= 600, f"{len(text)} characters of agent text kept"
        assert "\x1b" not in text and "\x00" not in text
    assert "<script>alert('agent')</script>" in hostile.last_error  # an excerpt of what it said
    page = as_alice.get(f"/servers/{round_.hostile_id}").get_data(as_text=True)
    assert "&lt;script&gt;alert(" in page
    assert "<script>alert(" not in page and "<b>bold</b>" not in page
    assert len(page) < len(ERROR_TEXT) // 10
    assert "A" * 1000 not in page
    round_.assert_honest_served()


def test_a_config_version_past_any_column_is_ignored(app, seed, alice, agents):
    """A ping answered with a number PostgreSQL cannot store: not stored, and the round goes on."""
    round_ = Round(app, seed, alice, agents, "odd-ping")
    round_.run()
    hostile = round_.server(round_.hostile_id)
    assert (hostile.status, hostile.config_applied) == ("online", 0)
    round_.assert_honest_served()


def test_a_workers_failure_text_in_a_setup_run_is_kept_short_and_clean(app, seed, alice):
    """While a server is set up, its root may print anything a task reports: a failing task's message
    reaches the job's log, its error and the server's page cut and without control characters."""
    server_id = seed.server(alice)
    with app.app_context():
        job = ProvisionJob(server_id=server_id, kind="add", status="running", log="")
        db.session.add(job)
        db.session.commit()
        recorder = EventRecorder(job.id, "site.yml")
        recorder({"event": "runner_on_failed", "event_data": {"host": "worker", "res": {"msg": ERROR_TEXT}}})
        job_id = job.id
    failure = recorder.failure
    job = seed.get(ProvisionJob, job_id)
    assert len(failure) <= 2000 and "\x00" not in failure and "\x1b" not in failure
    assert failure.startswith("<script>alert('agent')</script>")  # what it said, escaped where shown
    assert len(job.log) < 3000 and "\x00" not in job.log
