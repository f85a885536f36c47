"""A server's rounds come less often while they move nothing (issue 9 point 12: the panel's CPU).

Each round costs the daemon and the database a fixed amount (an HTTPS call for outcomes, a dozen
statements) whatever it carries; a server with nothing to report is asked less and less often, up
to five intervals apart, and a round that brings work (outcomes, a push) brings the pace back. A
campaign started meanwhile still reaches its agent within those five intervals."""

from __future__ import annotations

import time

from tests.panel.test_daemon_leases import _batches, _campaign, _requests, _wait, app_config, daemons  # noqa: F401

INTERVAL = 0.2  # the Daemons fixture's MAILFLEET_DAEMON_INTERVAL


def _outcome_calls(agent, since: float, until: float) -> int:
    return sum(1 for entry in _requests(agent) if entry["path"] == "/v1/outcomes" and since <= entry["t"] < until)


def test_an_idle_server_is_asked_less_often_and_a_start_still_comes_quickly(app, seed, alice, agents, daemons):
    agent = agents.start(record_file=str(agents.root / "record.jsonl"))
    server_id = agent.register(app, alice, "worker")
    daemons.start()
    _wait(lambda: any(e["path"] == "/v1/outcomes" for e in _requests(agent)), "the first round", 30, daemons)
    time.sleep(2.0)  # the pace slows down
    since = time.time()
    time.sleep(4.0)
    calls = _outcome_calls(agent, since, time.time())
    # Every interval that would be ~20 rounds; five intervals apart at most, ~4.
    assert 2 <= calls <= 7, f"{calls} rounds in 4 s with nothing to do"
    started = time.time()
    _campaign(app, seed, alice, server_id, 5)
    _wait(lambda: _batches(agent), "the campaign's push", 30, daemons)
    assert _batches(agent)[0]["t"] - started < 5 * INTERVAL + 1.0, "the start waited for more than the slowest pace"


def test_global_work_comes_every_few_intervals(app, monkeypatch):
    """Fail-over, finishing campaigns, DNS: a dozen statements a run whatever there is to do, and none
    of it needs doing every interval (a campaign shows finished, a silent server's letters move on,
    at most five intervals later)."""
    import threading

    from panel.daemon import runner

    runs: list[float] = []
    monkeypatch.setattr(runner, "global_work", lambda state: runs.append(time.monotonic()))
    app.config["DAEMON_INTERVAL"] = 0.1
    daemon = runner.Daemon(app, threading.Event(), provision=False)
    daemon._deadlines[runner.GLOBAL] = time.monotonic() + 60
    stop = threading.Event()
    thread = threading.Thread(target=daemon._run_global, args=(stop,))
    thread.start()
    time.sleep(2.0)
    stop.set()
    thread.join(5)
    assert 2 <= len(runs) <= 6, f"global work ran {len(runs)} times in 2 s at a 0.1 s interval"
