"""`python -m panel.daemon`: the panel's background worker (dispatch, outcomes, heartbeats).

Several may run on PostgreSQL, on one machine or several, sharing the servers (daemon/runner.py);
SQLite runs one, and a second one started says so and exits with status 1."""

import logging
import os
import signal
import sys
import threading

from .. import create_app
from ..config import Config
from .leases import OnlyOneDaemon
from .loop import run_forever


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    # A thread per served server, each with its own session: the pool must not make them wait for one another.
    connections = int(os.environ.get("MAILFLEET_DAEMON_DB_CONNECTIONS", Config.DAEMON_DB_CONNECTIONS))
    app = create_app({"SQLALCHEMY_ENGINE_OPTIONS": {**Config.SQLALCHEMY_ENGINE_OPTIONS, "pool_size": 5,
                                                    "max_overflow": max(connections - 5, 0)}})
    try:
        run_forever(app, stop, provision=bool(app.config["DAEMON_PROVISION"]))
    except OnlyOneDaemon as exc:
        sys.exit(f"panel daemon: {exc}")


if __name__ == "__main__":
    main()
