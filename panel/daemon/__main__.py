"""`python -m panel.daemon`: the panel's background worker (dispatch, outcomes, heartbeats)."""

import logging
import signal
import threading

from .. import create_app
from .loop import run_forever


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    run_forever(create_app(), stop)


if __name__ == "__main__":
    main()
