"""Fuzz run of the panel's JSON API (every route under /api/v1) and the agent API (every route,
the sealed outer layer and the JSON inside), in-process through Flask's test client on SQLite
(strategies and checks: tests/fuzzing/). Each request is checked for: no status 500, no
traceback text in the reply, and no change to the database when the request was refused (4xx).

Prints a JSON line for each of the first problems of each route and kind, one every 5,000
requests, and last {"requests": N, "status_500": k, "tracebacks": t, "db_changed_on_refusal": d, …}.
Usage: .venv/bin/python bench/fuzz.py [N] [--seed S]   (N: requests in all, default 100,000)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuzzing.targets import Fuzzer, Outcome  # noqa: E402

PROBLEMS_SHOWN = 3  # per route and kind of problem
PROGRESS_EVERY = 5000


def main() -> int:
    args = sys.argv[1:]
    count = next((int(arg.replace("_", "")) for arg in args if arg.replace("_", "").isdigit()), 100_000)
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else int(time.time())
    shown: Counter[tuple[str, str]] = Counter()
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="mailfleet-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    fuzzer = Fuzzer(workdir)
    print(json.dumps({"fuzz": "start", "seed": seed, "panel_routes": len(fuzzer.panel.rules),
                      "agent_routes": len(fuzzer.agent.paths)}), flush=True)

    def report(request, outcome: Outcome) -> None:
        for problem in outcome.problems:
            shown[outcome.route, problem] += 1
            if shown[outcome.route, problem] <= PROBLEMS_SHOWN:
                print(json.dumps({"problem": problem, "route": outcome.route, "status": outcome.status,
                                  "request": repr(request)[:600], "detail": outcome.detail}), flush=True)
        done = fuzzer.tally.requests
        if done % PROGRESS_EVERY == 0:
            print(json.dumps({"progress": done, "seconds": round(time.perf_counter() - started, 1),
                              **fuzzer.tally.headline()}), flush=True)

    try:
        fuzzer.run(count, report, seed=seed)
    finally:
        fuzzer.close()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    tally = fuzzer.tally
    print(json.dumps({**tally.headline(), "seconds": round(time.perf_counter() - started, 1), "seed": seed,
                      "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
                      "routes": dict(sorted(tally.routes.items()))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
