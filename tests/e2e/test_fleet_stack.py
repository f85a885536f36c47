"""A fleet on one machine (devserver/stack.py, `workers=3`): three worker pairs (Exim + agent) on
their own ports and loopback IPs, servers of one user, all delivering to the one capture.

What is asserted is what arrived at the capture (counted by Message-ID, per source IP), what the
panel's API and database say, and which processes and ports are alive.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devserver.stack import LocalStack

from tests.helpers import wait_for

from .conftest import Api, running_stack

WORKERS = 3
# Small pushes, so that even a small campaign is shared by every server (each takes letters
# while it has room in its window), and short daemon rounds, so the module stays quick.
PANEL_ENV = {
    "MAILFLEET_DISPATCH_WINDOW": "5",
    "MAILFLEET_DISPATCH_BATCH_SIZE": "5",
    "MAILFLEET_DAEMON_INTERVAL": "0.2",
}
RETRY_AFTER = 5  # s the agents wait before retrying a deferred letter (60 on a worker)


@pytest.fixture(scope="module")
def stack(exim_tmp_base: Path, databases) -> Iterator[LocalStack]:
    with running_stack(exim_tmp_base, databases, workers=WORKERS, panel_env=PANEL_ENV,
                       exim_retry_delays=(RETRY_AFTER,)) as running:
        yield running


def _online(api: Api, count: int) -> list[dict]:
    servers = api.get("/servers")
    return servers if len(servers) == count and all(s["status"] == "online" for s in servers) else []


def _send_campaign(api: Api, domain: str, n: int) -> int:
    list_id = api.post("/lists", {"name": domain})["id"]
    report = api.post(f"/lists/{list_id}/recipients", [{"email": f"r{i}@{domain}"} for i in range(n)])
    assert report["added"] == n
    campaign = api.post("/campaigns", {"name": domain, "subject": "Fleet", "from_email": "news@sender.example",
                                       "text": "Hello.\n{{ unsubscribe_url }}\n", "lists": [list_id]})
    api.post(f"/campaigns/{campaign['id']}/start", {})
    wait_for(lambda: api.get(f"/campaigns/{campaign['id']}/stats")["delivered"] == n,
             what=f"all {n} letters to {domain} delivered", timeout=90)
    return campaign["id"]


def _arrived(stack: LocalStack, domain: str) -> list:
    return [m for m in stack.capture.messages() if m.rcpt_to.endswith("@" + domain)]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def _exim_processes(stack: LocalStack, n: int) -> list[psutil.Process]:
    config = str(stack.workers[n].exim.config_path)
    return [p for p in psutil.process_iter(["cmdline"]) if config in (p.info.get("cmdline") or [])]


def test_each_worker_is_a_server_of_the_one_admin_with_its_own_ports_and_ips(stack: LocalStack, api: Api) -> None:
    servers = wait_for(lambda: _online(api, WORKERS), what="three servers online", timeout=60)
    assert sorted(s["id"] for s in servers) == sorted(w.server_id for w in stack.workers)
    for worker in stack.workers:
        (server,) = [s for s in servers if s["id"] == worker.server_id]
        assert [(ip["ip"], ip["helo"]) for ip in server["ips"]] == worker.source_ips
    all_ips = [ip for w in stack.workers for ip, _ in w.source_ips]
    assert len(set(all_ips)) == 2 * WORKERS
    ports = [p for w in stack.workers for p in (w.agent_port, w.exim_port)]
    assert len(set(ports)) == 2 * WORKERS
    # Worker 0 is what the single-worker attributes always meant.
    assert (stack.server_id, stack.agent_port, stack.exim_port, stack.exim) == (
        stack.workers[0].server_id, stack.workers[0].agent_port, stack.workers[0].exim_port, stack.workers[0].exim)
    assert stack.workers[0].source_ips == stack.settings.source_ips


def test_a_campaign_goes_out_through_all_three_workers_each_letter_once(stack: LocalStack, api: Api,
                                                                        panel_rows) -> None:
    wait_for(lambda: _online(api, WORKERS), what="three servers online", timeout=60)
    campaign_id = _send_campaign(api, "fleet-one.example", 60)
    arrived = _arrived(stack, "fleet-one.example")
    by_id = Counter(m.message_id for m in arrived)
    assert len(by_id) == 60 and set(by_id.values()) == {1}, "a letter arrived twice or not at all"
    assert sorted(m.rcpt_to for m in arrived) == sorted(f"r{i}@fleet-one.example" for i in range(60))
    # Every letter left from an IP of the server the panel gave it to, and every worker sent some.
    assigned = {email: (server_id, ip) for email, server_id, ip in panel_rows(
        "SELECT email, server_id, source_ip FROM deliveries WHERE campaign_id = ?", (campaign_id,))}
    owner = {ip: worker.server_id for worker in stack.workers for ip, _ in worker.source_ips}
    for message in arrived:
        assert assigned[message.rcpt_to] == (owner[message.peer_ip], message.peer_ip)
    per_worker = Counter(owner[m.peer_ip] for m in arrived)
    assert set(per_worker) == {w.server_id for w in stack.workers}, f"letters per server: {per_worker}"


def test_a_deferred_letter_is_retried_by_its_agent_not_by_exim(stack: LocalStack, api: Api) -> None:
    """The workers' Exims never retry a remote delivery on their own (their rule would wait two days):
    each agent forces its deferred letters with exim -M through its limits (docs/shaping.md)."""
    domain = "later.test"
    stack.capture.set_rule("@" + domain, "defer")
    list_id = api.post("/lists", {"name": domain})["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": f"r{i}@{domain}"} for i in range(3)])
    campaign = api.post("/campaigns", {"name": domain, "subject": "Later", "from_email": "news@sender.example",
                                       "text": "Hello.\n{{ unsubscribe_url }}\n", "lists": [list_id]})
    api.post(f"/campaigns/{campaign['id']}/start", {})

    def deferred() -> set[str]:
        return {a["rcpt"] for a in stack.capture.attempts() if a["domain"] == domain and a["result"] == "deferred"}

    wait_for(lambda: len(deferred()) == 3, what="the 3 letters deferred once", timeout=60)
    stack.capture.set_rule("@" + domain, "accept")
    # Exim's rule of old retried after 2 min at the soonest; the agents after RETRY_AFTER s
    wait_for(lambda: api.get(f"/campaigns/{campaign['id']}/stats")["delivered"] == 3,
             what="the 3 deferred letters retried by their agents and delivered", timeout=45)
    arrived = Counter(m.message_id for m in _arrived(stack, domain))
    assert len(arrived) == 3 and set(arrived.values()) == {1}, arrived
    for worker in stack.workers:
        assert worker.exim.queue_count() == 0


def test_one_workers_parts_killed_and_started_again_and_a_worker_added(stack: LocalStack, api: Api) -> None:
    worker = stack.workers[1]
    pids = [stack.processes[worker.api_name].pid, stack.processes[worker.sender_name].pid]
    assert _exim_processes(stack, 1)
    stack.kill_worker_part(1, "all")
    for part in ("api", "sender", "exim"):
        assert not stack.is_running(1, part)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    assert not _exim_processes(stack, 1)
    assert not _answers(worker.agent_port) and not _answers(worker.exim_port)
    # The other workers are untouched.
    assert all(stack.is_running(n, part) for n in (0, 2) for part in ("api", "sender", "exim"))

    stack.start_worker_part(1, "exim")
    assert stack.is_running(1, "exim") and _answers(worker.exim_port) and not stack.is_running(1, "api")
    stack.start_worker_part(1, "all")  # the parts not running yet
    assert all(stack.is_running(1, part) for part in ("api", "sender", "exim")) and _answers(worker.agent_port)
    stack.kill_worker_part(1, "sender")
    assert not stack.is_running(1, "sender") and stack.is_running(1, "api")
    stack.start_worker_part(1, "sender")

    added = stack.add_worker()
    assert added is stack.workers[3] and added.server_id not in {w.server_id for w in stack.workers[:3]}
    wait_for(lambda: _online(api, WORKERS + 1), what="four servers online", timeout=60)
    _send_campaign(api, "fleet-two.example", 40)
    arrived = _arrived(stack, "fleet-two.example")
    assert len({m.message_id for m in arrived}) == len(arrived) == 40
    ips = {m.peer_ip for m in arrived}
    for n in (1, 3):  # the restarted worker and the added one both sent
        assert ips & {ip for ip, _ in stack.workers[n].source_ips}, f"worker {n} sent nothing: {ips}"


def test_stop_ends_every_process_of_every_worker(stack: LocalStack) -> None:
    pids = [p.pid for p in stack.processes.values()]
    pids += [p.pid for n in range(len(stack.workers)) for p in _exim_processes(stack, n)]
    ports = [p for w in stack.workers for p in (w.agent_port, w.exim_port)] + [stack.capture.port]
    stack.stop()
    alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert [port for port in ports if _answers(port)] == []
