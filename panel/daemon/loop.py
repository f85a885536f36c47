"""The panel daemon's rounds: heartbeats, campaign states, pushes and outcomes, per server.

All of its work lives in the database (campaign states, batches, acks), so the daemon can be
stopped at any moment and started again: it goes on from what the database says.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from flask import Flask, current_app
from sqlalchemy import select

from ..extensions import db
from ..models import Campaign, DispatchBatch, Server, ServerEvent
from ..models.base import MAX_ROW_ID, utcnow
from ..services import agent_keys, domains, failover, network_policy, schedule, server_config, shaping, warmup
from ..services.agent_keys import open_agent_key
from ..services.imports.jobs import imports_dir, prune_files
from ..services.imports.sources import ImportLimits
from . import recall
from .agent_client import AgentClient, AgentError, AgentUnreachable, Limits
from .dispatch import dispatch_server
from .outcomes import collect_outcomes, finish_campaigns

log = logging.getLogger("panel.daemon")

HEARTBEAT_INTERVAL = 5.0  # seconds between pings of a server that is otherwise idle
PING_TIMEOUT = 5.0  # an unreachable server must not hold up the others for long
CONFIG_RETRY = 60.0  # seconds before a configuration the agent refused is pushed again
DNS_INTERVAL = 5.0  # seconds between looks at whether a domain's DNS records need publishing again
AGENT_STATES = {"running": "running", "paused": "paused", "cancelled": "cancelled"}
PRUNE_INTERVAL = 3600.0  # seconds between prunes of old import reports (imports also prune when they start)


@dataclass
class DaemonState:
    """What this process remembers between rounds; all of it can be rebuilt from the DB."""

    clients: dict[int, tuple[tuple, AgentClient]] = field(default_factory=dict)
    last_ping: dict[int, float] = field(default_factory=dict)
    # (campaign id, server id) -> the state last told to that agent; empty after a restart,
    # so every live campaign's state is told again once.
    told: dict[tuple[int, int], str] = field(default_factory=dict)
    # server id -> (config version the agent refused, when): not pushed again at once
    config_failed: dict[int, tuple[int, float]] = field(default_factory=dict)
    # server id -> when its waiting letters were last checked against the suppressions (daemon/recall.py)
    suppression_scans: dict[int, float] = field(default_factory=dict)
    dns_looked: float = float("-inf")
    pruned: float = float("-inf")
    # server id -> the error its last round ended with: the same error round after round is recorded once
    failing: dict[int, str] = field(default_factory=dict)

    def client(self, server: Server) -> AgentClient:
        identity = (server.api_url, server.agent_key, server.cert_fingerprint)
        known = self.clients.get(server.id)
        if known is None or known[0] != identity:
            if known:
                self.clients.pop(server.id)[1].close()
            # The host is resolved and checked once per client (network_policy.HostRefused if the panel
            # may not call it) and the client connects to that address: a later lookup cannot move it.
            address = network_policy.check(server.host, server.api_port)
            url = f"https://[{address}]:{server.api_port}" if ":" in address else f"https://{address}:{server.api_port}"
            name = None if address == server.host else server.host
            # Opened once per client: the key is sealed in the DB (identity holds the sealed form).
            client = AgentClient(url, open_agent_key(server), server.cert_fingerprint,
                                 limits=Limits.from_config(current_app.config), server_hostname=name)
            self.clients[server.id] = (identity, client)
        return self.clients[server.id][1]

    def forget(self, server_id: int) -> None:
        """What this daemon knew of a server it stops serving (another daemon may serve it meanwhile)."""
        known = self.clients.pop(server_id, None)
        if known is not None:
            known[1].close()
        self.last_ping.pop(server_id, None)
        self.config_failed.pop(server_id, None)
        self.failing.pop(server_id, None)
        self.suppression_scans.pop(server_id, None)
        for key in list(self.told):  # list(): a snapshot, other servers' threads add keys meanwhile
            if key[1] == server_id:
                self.told.pop(key, None)


def _mark(server: Server, status: str, message: str) -> None:
    if server.status != status:
        db.session.add(ServerEvent(server_id=server.id, kind=status, message=message))
        log.info("server %s (%s) is %s: %s", server.id, server.name, status, message)
    server.status = status
    if status == "online":
        server.last_seen_at = utcnow()
        server.last_error = None
    else:
        server.last_error = message
    db.session.commit()


def _heartbeat(state: DaemonState, server: Server, client: AgentClient) -> bool:
    now = time.monotonic()
    if now - state.last_ping.get(server.id, -HEARTBEAT_INTERVAL) < HEARTBEAT_INTERVAL:
        return server.status == "online"  # an offline server is asked again only every interval
    state.last_ping[server.id] = now
    try:
        reply = client.call("/v1/ping", {}, timeout=PING_TIMEOUT)
    except AgentError as exc:
        _mark(server, "offline", str(exc))
        return False
    held = reply.get("config_version") if isinstance(reply, dict) else None
    if isinstance(held, int) and not isinstance(held, bool) and 0 <= held <= MAX_ROW_ID:
        server.config_applied = held  # e.g. 0 again after a reinstall: pushed again below
    if isinstance(reply, dict):
        shaping.record(server, reply.get("shaping"))  # the agent's backoff per (IP, provider)
        warmup.record(server, reply.get("warmup"))  # the warming IPs' letters per provider today
    _mark(server, "online", "agent answered")
    return True


def _push_config(state: DaemonState, server: Server, client: AgentClient) -> None:
    """Push the server's settings when the agent holds another version. A refused config is
    recorded once and tried again after CONFIG_RETRY (the agent may have been fixed meanwhile);
    an unreachable agent raises AgentUnreachable like any other call."""
    if server.config_applied == server.config_version:
        return
    if server.config_version == 0:
        # the agent holds settings this panel does not know of (a restored DB): the panel's win
        server_config.bump(server)
        db.session.commit()
    version = server.config_version
    failed = state.config_failed.get(server.id)
    if failed is not None and failed[0] == version and time.monotonic() - failed[1] < CONFIG_RETRY:
        return
    try:
        reply = client.call("/v1/config", server_config.agent_config(server))
    except AgentUnreachable:
        raise
    except AgentError as exc:
        db.session.rollback()
        if failed is None or failed[0] != version:
            server_config.record_refused(server, version, str(exc))
            db.session.commit()
            log.warning("server %s: configuration version %d refused: %s", server.id, version, exc)
        state.config_failed[server.id] = (version, time.monotonic())
        return
    state.config_failed.pop(server.id, None)
    server_config.record_applied(server, version, reply)
    db.session.commit()
    log.info("server %s: configuration version %d applied", server.id, version)


def _hand_over_key(server: Server, client: AgentClient) -> None:
    """A new agent key was asked for (`servers rotate-key`): it goes to the agent sealed with the
    current key; once the agent answered, the panel uses only the new one (the next round makes
    a new client). The rest of this round still uses the old key, which the agent keeps opening."""
    if not server.agent_key_next:
        return
    try:
        client.call("/v1/key", {"key": agent_keys.open_next_key(server)})
    except AgentUnreachable:
        raise
    except AgentError as exc:
        db.session.rollback()
        agent_keys.hand_over_refused(server, str(exc))
        db.session.commit()
        log.warning("server %s: the agent did not take a new key: %s", server.id, exc)
        return
    agent_keys.handed_over(server)
    db.session.commit()
    log.info("server %s: agent key replaced", server.id)


def _tell_campaign_states(state: DaemonState, server: Server, client: AgentClient) -> None:
    # The campaigns this agent was given letters of (a server takes letters only when it has room).
    given = select(DispatchBatch.id).where(DispatchBatch.campaign_id == Campaign.id, DispatchBatch.server_id == server.id)
    campaigns = db.session.execute(
        select(Campaign.id, Campaign.status).where(Campaign.status.in_(tuple(AGENT_STATES)), given.exists())
    ).all()
    for campaign_id, status in campaigns:
        if state.told.get((campaign_id, server.id)) == status:
            continue
        client.call("/v1/campaigns/state", {"campaign_id": campaign_id, "state": AGENT_STATES[status]})
        state.told[(campaign_id, server.id)] = status


def _refused(state: DaemonState, server: Server, message: str) -> None:
    """Its host is one the panel may not call (e.g. the admin narrowed ALLOWED_HOST_NETWORKS): said
    once, in an event and last_error, while it stays so; the host is checked again each round."""
    if state.failing.get(server.id) != message:
        db.session.add(ServerEvent(server_id=server.id, kind="refused", message=message))
        log.warning("server %s: %s", server.id, message)
    state.failing[server.id] = message
    server.status = "offline"
    server.last_error = message
    db.session.commit()


def serve_server(state: DaemonState, server: Server) -> bool:
    """One round for one server; True if it pushed a batch (so the next round comes at once,
    to fill the server's window). Outcomes alone wait for the next tick: fetching them in
    bigger, rarer replies costs the agent and the panel less CPU than a tight polling loop."""
    try:
        client = state.client(server)
    except network_policy.HostRefused as exc:
        _refused(state, server, f"not contacted: {exc}")
        return False
    silent = recall.silent_too_long(server, current_app.config["SERVER_FAILOVER_AFTER"])
    if not _heartbeat(state, server, client):
        return False
    try:
        _push_config(state, server, client)
        _hand_over_key(server, client)
        _tell_campaign_states(state, server, client)
        if silent:  # its letters went on waiting while the others sent: they go to whoever has room
            recall.recall_after_silence(client, server)
        # Outcomes first: they free the window, and a replaced queue's letters (outcomes._take_epoch)
        # go back to their campaigns before new ones are pushed to the new queue.
        collect_outcomes(client, server)
        recall.recall_suppressed(client, server, state.suppression_scans)
        pushed = dispatch_server(client, server)
    except AgentUnreachable as exc:
        db.session.rollback()
        _mark(server, "offline", str(exc))
        return False
    except AgentError as exc:
        db.session.rollback()
        if state.failing.get(server.id) != str(exc):  # an agent failing every round is not an event a round
            db.session.add(ServerEvent(server_id=server.id, kind="error", message=str(exc)))
            log.warning("server %s: %s", server.id, exc)
        state.failing[server.id] = str(exc)
        server.last_error = str(exc)
        db.session.commit()
        return False
    state.failing.pop(server.id, None)
    state.last_ping[server.id] = time.monotonic()  # it just answered: that is a heartbeat
    return pushed


def _fail_over() -> None:
    """Letters never pushed to a server silent for SERVER_FAILOVER_AFTER go to the other servers."""
    for server_id, count in failover.release_stranded(current_app.config["SERVER_FAILOVER_AFTER"]).items():
        log.warning("server %s: silent; %d letters never pushed to it went back to their campaigns", server_id, count)
    db.session.commit()


def _publish_domains(state: DaemonState) -> None:
    """Domains whose records changed (a new domain, an IP added or removed) are published again."""
    if time.monotonic() - state.dns_looked < DNS_INTERVAL:
        return
    state.dns_looked = time.monotonic()
    domains.publish_stale(current_app.config["PUBLIC_URL"])
    db.session.commit()


def _prune_imports(state: DaemonState) -> None:
    """Reports of rejected rows older than IMPORT_REPORT_DAYS go, even when nobody imports."""
    if time.monotonic() - state.pruned < PRUNE_INTERVAL:
        return
    state.pruned = time.monotonic()
    app = current_app._get_current_object()
    prune_files(imports_dir(app), ImportLimits.from_config(app.config).report_days)


def _start_scheduled() -> None:
    """Drafts whose scheduled start has come start now (each exactly once: services/schedule.py)."""
    for campaign_id in schedule.start_due_campaigns():
        log.info("campaign %s started at its scheduled time", campaign_id)


def global_work(state: DaemonState) -> None:
    """What concerns no one server; one daemon at a time does it (the `global` lease, daemon/runner.py)."""
    _start_scheduled()
    _fail_over()
    finish_campaigns()
    _publish_domains(state)
    _prune_imports(state)


def run_round(state: DaemonState) -> bool:
    """Every ready server in turn, then the global work: one daemon's round in one thread (the tests'
    way of running the daemon step by step; the daemon process serves each server in its own thread)."""
    busy = False
    # Servers being set up, taken down or whose setup failed have no agent to talk to.
    for server in db.session.scalars(select(Server).where(Server.ready).order_by(Server.id)).all():
        server_id = server.id
        try:
            busy = serve_server(state, server) or busy
        except Exception:  # whatever one agent made of this round, the other servers still get theirs
            db.session.rollback()
            log.exception("server %s: round failed", server_id)
    global_work(state)
    db.session.remove()
    return busy


def run_forever(app: Flask, stop: threading.Event, *, provision: bool = True) -> None:
    """The daemon process: its share of the servers by lease, each served in its own thread
    (daemon/runner.py). leases.OnlyOneDaemon if another daemon runs on this SQLite database."""
    from .runner import Daemon

    Daemon(app, stop, provision=provision).run()
