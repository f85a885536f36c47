"""One daemon process among several: the servers it serves by lease, each in a thread of its own.

Every DAEMON_LEASE_SECONDS / 5 the main thread renews this daemon's leases (daemon/leases.py): its
own `daemon:<id>` (it is alive), each `server:<id>` it serves, `global` and `provision` if it holds
them. It serves at most its share of the ready servers (ready servers / live daemons, rounded up):
one holding more lets the extras go, and so does one above the rounded-down share while another
daemon holds less than that, so a daemon started later gets work; one holding fewer takes
servers whose lease is free or expired, so a killed daemon's servers are taken over once its leases
expire (within DAEMON_LEASE_SECONDS plus a renewal). Each held server is served by its own thread,
with its own app context and DB session, so a slow or unreachable agent delays nobody else; before
each round the thread checks that the lease is still this daemon's, and stops when it is not.

Global work (fail-over, finishing campaigns, DNS publishing, pruning) runs in the `global` lease's
holder only, provisioning in the `provision` lease's holder only (see Daemon._provision).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
import random
import threading
import time
from dataclasses import dataclass

from flask import Flask

from ..extensions import db
from ..models import Server
from . import leases
from .loop import DaemonState, global_work, serve_server

log = logging.getLogger("panel.daemon")

GLOBAL = "global"
SLOWEST_PACE = 5  # intervals at most between a server's rounds (a new campaign waits no longer), and global work's
ROUND_ITEMS = 500  # outcomes a round should bring before rounds come faster
PROVISION = "provision"


def _server_lease(server_id: int) -> str:
    return f"server:{server_id}"


@dataclass
class _Worker:
    thread: threading.Thread
    stop: threading.Event
    leaving: bool = False  # let go (over this daemon's share, or not ready): released once the thread ended


class Daemon:
    def __init__(self, app: Flask, stop: threading.Event, *, provision: bool = True) -> None:
        self.app, self.stop_event, self.provision = app, stop, provision
        self.me = leases.daemon_id()
        self.seconds = float(app.config["DAEMON_LEASE_SECONDS"])
        self.interval = app.config["DAEMON_INTERVAL"]
        self.state = DaemonState()
        self.sqlite = not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
        # lease name -> monotonic time until which it is surely ours: renewal started before the
        # database set its expiry, so this deadline comes no later than the database's.
        self._deadlines: dict[str, float] = {}
        self.workers: dict[int, _Worker] = {}
        self._global: _Worker | None = None
        self.provisioner = None

    def holds(self, name: str) -> bool:
        deadline = self._deadlines.get(name)
        return deadline is not None and time.monotonic() < deadline

    def _take(self, name: str) -> bool:
        started = time.monotonic()
        if leases.take(db.session, name, self.me, self.seconds):
            self._deadlines[name] = started + self.seconds
            return True
        self._deadlines.pop(name, None)
        return False

    # the main thread
    def run(self) -> None:
        with self.app.app_context():
            try:
                if self.sqlite:
                    leases.claim_sqlite(db.session, self.me, self.seconds)
            finally:
                db.session.remove()
        log.info("daemon started (%s)", self.me)
        while not self.stop_event.is_set():
            with self.app.app_context():
                try:
                    self.tick()
                except Exception:  # the database away for a moment: leases are renewed at the next tick
                    log.exception("daemon: renewing leases failed")
                    db.session.rollback()
                finally:
                    db.session.remove()
            self.stop_event.wait(self.seconds / 5)
        self.shutdown()

    def tick(self) -> None:
        if self.sqlite and not self._take(leases.SQLITE_LEASE):
            log.error("daemon: another daemon took this SQLite database; stopping")
            self.stop_event.set()
            return
        self._take(f"daemon:{self.me}")
        ready = set(db.session.scalars(db.select(Server.id).where(Server.ready)))
        db.session.commit()
        self._renew_servers(ready)
        taken = leases.held(db.session, "server:")
        share = self._share(len(ready), taken)
        serving = sorted(sid for sid, worker in self.workers.items() if not worker.leaving)
        for server_id in serving[share:]:  # over this daemon's share: the others take them
            self._let_go(server_id)
        if len(serving) < share:
            free = [sid for sid in ready
                    if sid not in self.workers and taken.get(_server_lease(sid), self.me) == self.me]
            random.shuffle(free)  # daemons starting together try different servers first
            for server_id in free[:share - len(serving)]:
                if self._take(_server_lease(server_id)):
                    self._start_worker(server_id)
        self._global_work()
        if self.provision:
            self._provision()

    def _share(self, servers: int, taken: dict[str, str]) -> int:
        """How many servers this daemon may serve: servers / live daemons, rounded up; rounded down
        while another live daemon serves fewer than that (one started later), so it gets work."""
        live = [name.partition(":")[2] for name in leases.held(db.session, "daemon:")] or [self.me]
        low, high = servers // len(live), math.ceil(servers / len(live))
        counts = Counter(taken.values())
        starved = any(counts[other] < low for other in live if other != self.me)
        return low if starved else high

    def _renew_servers(self, ready: set[int]) -> None:
        for server_id, worker in list(self.workers.items()):
            name = _server_lease(server_id)
            if not worker.thread.is_alive():
                del self.workers[server_id]
                if worker.leaving:
                    leases.release(db.session, self.me, [name])
                    self._deadlines.pop(name, None)
                continue
            if server_id not in ready:
                self._let_go(server_id)
            # Renewed while its thread runs, leaving or not: nobody else serves it mid-round.
            if not self._take(name):
                log.warning("server %s: lease lost to another daemon; no longer served here", server_id)
                worker.stop.set()

    def _let_go(self, server_id: int) -> None:
        worker = self.workers[server_id]
        worker.leaving = True
        worker.stop.set()

    def _start_worker(self, server_id: int) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=self._serve, args=(server_id, stop), name=f"server-{server_id}", daemon=True)
        self.workers[server_id] = _Worker(thread, stop)
        thread.start()
        log.info("server %s: served by this daemon", server_id)

    # a server's thread
    def _serve(self, server_id: int, stop: threading.Event) -> None:
        name = _server_lease(server_id)
        pace = self.interval
        try:
            while not stop.is_set() and not self.stop_event.is_set() and self.holds(name):
                busy, reported = False, 0
                with self.app.app_context():
                    try:
                        server = db.session.get(Server, server_id)
                        if server is not None and server.ready:
                            ack = server.outcome_ack
                            busy = serve_server(self.state, server)
                            reported = server.outcome_ack - ack  # items it reported (< 0: a new queue)
                    except Exception:  # whatever this agent made of the round, the next one comes
                        db.session.rollback()
                        log.exception("server %s: round failed", server_id)
                    finally:
                        db.session.remove()
                if busy:  # a round that pushed is followed at once by the next (the window fills)
                    pace = self.interval
                    continue
                pace = self._pace(pace, reported)
                stop.wait(pace)
        finally:
            self.state.forget(server_id)  # another daemon may serve it meanwhile: told again when back

    def _pace(self, pace: float, reported: int) -> float:
        """The wait before a server's next round. Each round costs the same whatever it carries (an
        HTTPS call, a dozen statements), so a server reporting little is asked less often: the wait
        doubles, up to SLOWEST_PACE intervals, after a round that brought fewer than ROUND_ITEMS
        outcomes, and halves after one that brought more (a window of letters lasts far longer)."""
        if reported < 0 or reported >= ROUND_ITEMS:
            return max(pace / 2, self.interval)
        return min(pace * 2, SLOWEST_PACE * self.interval)

    # global work
    def _global_work(self) -> None:
        if self._take(GLOBAL):
            leases.prune(db.session)
            if self._global is None or not self._global.thread.is_alive():
                stop = threading.Event()
                thread = threading.Thread(target=self._run_global, args=(stop,), name="global", daemon=True)
                self._global = _Worker(thread, stop)
                thread.start()
                log.info("global work (fail-over, campaigns, DNS, pruning) done by this daemon")
        elif self._global is not None:
            self._global.stop.set()

    def _run_global(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self.stop_event.is_set() and self.holds(GLOBAL):
            with self.app.app_context():
                try:
                    global_work(self.state)
                except Exception:
                    db.session.rollback()
                    log.exception("global work failed")
                finally:
                    db.session.remove()
            # A dozen statements a run whatever there is to do, none of it urgent to the second: a
            # campaign shows finished, a silent server's letters move on, at most this much later.
            stop.wait(SLOWEST_PACE * self.interval)

    def _provision(self) -> None:
        """Provisioning in one daemon at a time, the `provision` lease's holder: it alone listens on the
        password channel (a Unix socket in the instance folder, where the web view hands it the root
        password) and runs jobs. A new holder fails the jobs the previous one left running or whose
        password died with it (Provisioner._fail_orphans): no other daemon runs them."""
        from .provision import Provisioner

        if self._take(PROVISION):
            if self.provisioner is None:
                self.provisioner = Provisioner(self.app, threading.Event())
                self.provisioner.start()
                log.info("provisioning done by this daemon")
        elif self.provisioner is not None:
            log.warning("provisioning lease lost to another daemon; provisioning stops here")
            threading.Thread(target=self.provisioner.stop, name="provisioner-stop", daemon=True).start()
            self.provisioner = None

    def shutdown(self) -> None:
        for worker in [*self.workers.values(), *([self._global] if self._global else [])]:
            worker.stop.set()
        if self.provisioner is not None:
            self.provisioner.stop()
        ended = []
        deadline = time.monotonic() + 10
        for server_id, worker in self.workers.items():
            worker.thread.join(max(deadline - time.monotonic(), 0))
            if not worker.thread.is_alive():
                ended.append(_server_lease(server_id))
        if self._global is not None:
            self._global.thread.join(max(deadline - time.monotonic(), 0))
        with self.app.app_context():
            try:
                # Given back now, so the other daemons need not wait for them to expire; a server whose
                # round is still running keeps its lease until it expires.
                names = [*ended, GLOBAL, PROVISION, f"daemon:{self.me}", leases.SQLITE_LEASE]
                leases.release(db.session, self.me, names)
            except Exception:
                log.exception("daemon: could not give its leases back; they expire in %g s", self.seconds)
            finally:
                db.session.remove()
        for _, client in list(self.state.clients.values()):
            client.close()
        log.info("daemon stopped")
