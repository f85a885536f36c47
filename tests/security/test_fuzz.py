"""A short fuzz run of the panel's JSON API and the agent API (issue 12 point 9; bench/fuzz.py is
the long one, with the same strategies and checks from tests/fuzzing/): a few thousand requests of
wrong types, sizes, encodings and nesting across every route, with good, bad and missing tokens,
and for the agent broken seals as well as bent JSON inside good ones. None may answer 500 or show
a traceback, and none that is refused (4xx) may change a row of the panel's database or the
agent's queue.

The seed is fixed so `make test` sends the same requests every time (MAILFLEET_FUZZ_SEED picks
another); a failing request is shrunk by Hypothesis to a small one and shown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzzing.strategies import AgentRequest
from tests.fuzzing.targets import Fuzzer, Outcome, traceback_text

REQUESTS = 1500  # per database backend
SEED = int(os.environ.get("MAILFLEET_FUZZ_SEED", "12"))


@pytest.fixture
def fuzzer(tmp_path: Path, db_backend: str, request: pytest.FixtureRequest) -> Iterator[Fuzzer]:
    server = request.getfixturevalue("postgres") if db_backend == "postgresql" else None
    fuzzer = Fuzzer(tmp_path, pool=300, postgres=server)
    yield fuzzer
    fuzzer.close()


def test_the_checks_see_what_they_look_for(fuzzer: Fuzzer) -> None:
    """The counter sees a row written through the API (and not a read), and a traceback is recognised."""
    panel = fuzzer.panel
    headers = {"Authorization": f"Bearer {panel.token}"}
    before = panel.store.read()
    assert panel.client.get("/api/v1/lists", headers=headers).status_code == 200
    assert panel.store.read() == before  # the token's bookkeeping is not counted
    assert panel.client.post("/api/v1/lists", json={"name": "counted"}, headers=headers).status_code == 201
    assert panel.store.read()[0] > before[0]
    panel.reset()
    assert panel.store.read() == before and len(panel.client.get("/api/v1/lists", headers=headers).get_json()) == 2
    agent_before = fuzzer.agent.counter.read()
    fuzzer.agent.send(AgentRequest("/v1/campaigns/state", "sealed", {"campaign_id": 5, "state": "paused"}))
    assert fuzzer.agent.counter.read()[0] > agent_before[0]

    assert traceback_text(b'{"error": "Traceback (most recent call last):\\n  File \\"app.py\\", line 3"}')
    assert traceback_text(b"KeyError: 'email'") and traceback_text(b"(psycopg.errors.DataError) NUL")
    assert not traceback_text(b'{"error": "send a JSON object: the body is not valid JSON"}')


def test_fuzzed_requests_get_no_500_no_traceback_and_refusals_change_nothing(fuzzer: Fuzzer) -> None:
    def report(request, outcome: Outcome) -> None:
        assert not outcome.problems, (f"{outcome.route} answered {outcome.status} ({', '.join(outcome.problems)}): "
                                      f"{outcome.detail}\nrequest: {request!r}"[:4000])

    tally = fuzzer.run(REQUESTS, report, seed=SEED, shrink=True)

    assert tally.requests >= REQUESTS
    assert tally.headline() == {"requests": tally.requests, "status_500": 0, "tracebacks": 0,
                                "db_changed_on_refusal": 0}
    # every route was reached, and the run got past authentication and the seal often enough to matter
    assert set(tally.routes) >= {rule for _, rule, _ in fuzzer.panel.rules} | set(fuzzer.agent.paths)
    assert sum(n for status, n in tally.statuses.items() if status < 300) > REQUESTS // 10
    assert tally.statuses[400] > REQUESTS // 10 and tally.statuses[401] and tally.statuses[403]
