"""Chaos run (issue 9 point 11): a campaign over three workers while, round after round, a random one
of the daemon, an agent's API, its sender, its Exim or a whole worker is SIGKILLed at a random moment
(0.5–4 s into the round), left down 0–2 s and started again (devserver/chaos.py).

Prints a JSON line per round (what was killed, letters at the capture so far); the last line is
{"rounds", "recipients", "delivered_once", "lost", "duplicates", "stats_match", "wall_s", "load"}.
Target: 0 lost, 0 duplicates, stats_match true.
Usage: python bench/chaos.py [ROUNDS] [RECIPIENTS] [sqlite|postgresql] [--seed N] [--keep]
(defaults 20, 5000, sqlite, a random seed; --keep leaves the stack's folder, logs included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devserver import chaos  # noqa: E402
from devserver.stack import LocalStack, StackSettings  # noqa: E402


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", nargs="?", type=int, default=20)
    parser.add_argument("recipients", nargs="?", type=int, default=5000)
    parser.add_argument("database", nargs="?", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder (its logs) afterwards")
    args = parser.parse_args()
    # Stopped by a signal (a background job ignores SIGINT): stop the whole stack on the way out.
    def stop(*_: object) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the stack's stop short
        sys.exit(130)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    tmp = Path(tempfile.mkdtemp(prefix="mailfleet-chaos-"))
    tmp.chmod(0o755)  # Exim's processes (Debian-exim) keep their run directory in it
    emit({"phase": "config", "rounds": args.rounds, "recipients": args.recipients, "database": args.database,
          "seed": seed, "root": str(tmp)})
    try:
        with contextlib.ExitStack() as stack:
            database_url = None
            if args.database == "postgresql":
                from devserver.postgres import PostgresServer

                database_url = stack.enter_context(PostgresServer()).create_database("chaos")
            settings = StackSettings(root=tmp, workers=3, database_url=database_url, panel_env=dict(chaos.PANEL_ENV))
            running = stack.enter_context(LocalStack(settings))
            load_before = os.getloadavg()[0]
            headline = chaos.run(running, args.recipients, args.rounds, seed, emit=lambda r: None if "rounds" in r else emit(r),
                                 finish_timeout=max(300, args.recipients / 20))
        headline.pop("detail")
        emit({**headline, "database": args.database, "seed": seed,
              "load": [round(load_before, 2), round(os.getloadavg()[0], 2)]})
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
