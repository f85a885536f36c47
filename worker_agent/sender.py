"""The sender process: claim letters, render them, submit them to the local Exim.

One main thread claims due letters in chunks and renders them (CPU work, one core);
``smtp_connections`` threads each hold an SMTP connection to Exim and submit; the main
thread records their results in batches. A thread follows Exim's main log, and bounce
spool files are collected between rounds. SIGTERM stops claiming, lets the letters in
flight finish and be recorded, puts unstarted ones back, then exits.

Exactly once through SIGKILL: right before a letter's SMTP transaction its 'submitting' mark is
on disk (the threads marking at the same moment share one commit); Exim's answer is recorded
durably too. A letter a killed sender left 'claimed' never reached Exim and is simply queued
again at the next start (no attempt used); one left 'submitting', or whose connection broke
after DATA began, is settled by reconcile.py against Exim's log and queue first.
"""

from __future__ import annotations

import fcntl
import json
import logging
import queue as stdlib_queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import bounce_spool, remote_config
from .backoff import Backoff
from .config import AgentConfig, ConfigError, rate_for
from .connection_limit import DeliverySlots, tag_per_connection
from .exim_log import EximLogReader
from .exim_retry import RetryDriver
from .providers import ProviderResolver, ProviderTable
from .queue import Claimed, Event, QueueDB
from .rate_limit import RateLimiter
from .reconcile import Reconciler
from .render import CampaignError, Letter, Renderer, RenderError
from .smtp_submit import EximSubmitter, Outcome
from .warmup import Warmup

log = logging.getLogger("worker_agent.sender")

CHUNK = 200  # letters claimed per round
IDLE_WAIT = 0.2  # s between looks at an idle queue
RETRY_DELAYS = (30.0, 120.0, 600.0, 1800.0, 3600.0)  # s before attempt 2, 3, …
UNREACHABLE_BACKOFF = (1.0, 30.0)  # s: first and longest pause while the local Exim does not answer
HOUSEKEEPING_EVERY = 1.0  # s: bounce spool, cancelled campaigns
COALESCE = 0.02  # s to gather more results into one commit
SHAPING_KEY = "shaping"  # agent_state: the backoff states the ping reports


@dataclass
class _Work:
    claimed: Claimed
    letter: Letter


@dataclass
class _Results:
    submitted: list[tuple[int, str | None, int, str]] = field(default_factory=list)
    failed: list[tuple[int, int | None, str]] = field(default_factory=list)
    retry: list[tuple[int, float, int | None, str]] = field(default_factory=list)
    release: list[tuple[int, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.submitted or self.failed or self.retry or self.release)


class Sender:
    def __init__(self, config: AgentConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        # durable: a 'submitting' mark or a hand-over to Exim lost in a power cut would send a letter twice
        self.queue = QueueDB(config.queue_db, durable=True)
        self.renderer = Renderer()
        # outlives config versions, like the MX cache
        self.backoff = Backoff(cooling=config.backoff_cooling, step_every=config.backoff_step_every)
        self._shaping_written = -1  # self.backoff.version last written for the ping
        self.slots = DeliverySlots()  # letters in Exim's hands per (IP, provider); outlives config versions
        # Exim's deferred letters retried through the limiter (off: Exim retries on its own schedule)
        self._retries = (RetryDriver(self.queue, config.exim_spool, config.exim_retries)
                         if config.exim_retries is not None else None)
        self.limiter = RateLimiter(config.rate_for, backoff=self.backoff, slots=self.slots)  # replaced on a push
        # MX answers outlive config versions: each new provider table gets the same cache
        self._resolver = ProviderResolver(ProviderTable(), nameserver=config.dns_server, port=config.dns_port)
        self._config_version: int | None = None  # of the rules in self.limiter
        self.warmup = Warmup(self.queue, {})  # daily allowances of the IPs warming up (warmup.py)
        self._groups = self._resolver  # provider groups of the table in force (warm-up counts by them)
        self._load_rate_limits()
        self._work: stdlib_queue.Queue[_Work | None] = stdlib_queue.Queue()
        self._done: stdlib_queue.Queue[tuple[Claimed, Outcome]] = stdlib_queue.Queue()
        self._in_flight = 0
        self._flying: set[int] = set()  # ids handed to the SMTP threads and not yet back (main thread)
        self._offers = _OfferLog(self.queue)
        self._submitters: list[EximSubmitter] = []
        self._reconciler: Reconciler | None = None
        self._campaigns: dict[int, tuple[str, dict[str, Any]]] = {}
        self._paused_until = 0.0  # the local Exim did not answer: no claims until then
        self._unreachable = 0
        self.retry_delays = RETRY_DELAYS
        # letters rendered ahead of the SMTP threads: enough to keep them busy, few enough to
        # keep memory flat and a cancel or pause quick to take effect
        self._capacity = max(CHUNK, config.smtp_connections * 50)

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self) -> None:
        lock = _take_lock(self.config)
        try:
            # We hold the sender lock, so every claimed letter belongs to a sender that is gone.
            requeued, failed = self.queue.recover_claims(time.time(), self.config.max_attempts)
            if requeued or failed:
                log.info("recovered claimed letters: %d queued again, %d failed", requeued, failed)
            threads = [threading.Thread(target=self._submit_loop, name=f"smtp-{i}", daemon=True)
                       for i in range(self.config.smtp_connections)]
            reader = EximLogReader(self.queue, self.config.exim_mainlog, in_flight=self._flying.__contains__,
                                   observe=self._observe)
            self._reconciler = Reconciler(self.queue, reader, self.config.exim_spool, self.config.smtp_port,
                                          self.config.max_attempts)
            # Catch up with Exim's log before claiming (outcomes in order). Letters the last sender
            # left 'submitting' are not claimable whatever this read finds: the reconciler settles them.
            while not self.stop.is_set() and reader.poll(self.stop):
                pass
            threads.append(threading.Thread(target=reader.run, args=(self.stop,), name="exim-log", daemon=True))
            for t in threads:
                t.start()
            log.info("sender started: %d SMTP connections to %s:%d, following %s", self.config.smtp_connections,
                     self.config.smtp_host, self.config.smtp_port, self.config.exim_mainlog)
            self._main_loop()
            self._shutdown(threads)
        finally:
            lock.close()
            self.queue.close()

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        unstarted: list[int] = []
        while True:  # letters not yet picked up by a thread go back to the queue as they were
            try:
                item = self._work.get_nowait()
            except stdlib_queue.Empty:
                break
            if item is not None:
                unstarted.append(item.claimed.id)
                self.slots.free(item.claimed.id)
                self._in_flight -= 1
                self._flying.discard(item.claimed.id)
        now = time.time()
        self.queue.finish(release=[(i, now) for i in unstarted], max_attempts=self.config.max_attempts)
        deadline = time.monotonic() + 90
        while self._in_flight > 0 and time.monotonic() < deadline:
            self._record(self._gather(timeout=0.5))
        for _ in threads:
            self._work.put(None)
        for t in threads:
            t.join(timeout=10)
        if self._retries is not None:
            self._retries.stop()
        log.info("sender stopped")

    # -- main thread --------------------------------------------------------------------------

    def _main_loop(self) -> None:
        next_housekeeping = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_housekeeping:
                self._housekeeping()
                next_housekeeping = now + HOUSEKEEPING_EVERY
            results = self._gather(timeout=0)
            if results:
                self._record(results)
            room = self._capacity - self._in_flight
            claimed = 0
            if room >= self._capacity // 2 and time.monotonic() >= self._paused_until:
                claimed = self._claim_and_render(min(room, CHUNK))
            if not claimed and not results:
                self._record(self._gather(timeout=IDLE_WAIT))  # wakes as soon as a result comes in

    def _housekeeping(self) -> None:
        try:
            self._load_rate_limits()
            self._write_shaping()
            if self._retries is not None:
                self._retries.step(self.limiter)
            bounce_spool.collect(self.queue, self.config.bounce_spool)
            bounce_spool.remove_stale_tmp(self.config.bounce_spool)
            self.queue.cancel_orphans()
            if self._reconciler is not None:
                ports = {port for s in list(self._submitters) if (port := s.local_port) is not None}
                self._reconciler.step(in_flight=set(self._flying), live_ports=ports)
        except Exception:
            log.exception("housekeeping failed; trying again")

    def _load_rate_limits(self) -> None:
        """Rebuild the buckets when the panel has pushed a new config (checked every second).

        Letters held by the old limits are made due again, so a raised limit takes effect at
        once; the new buckets pace them. Retries waiting after a remote refusal keep their time.
        """
        version = remote_config.stored_version(self.queue)
        if version == self._config_version:
            return
        remote = remote_config.stored(self.queue)
        rules = remote_config.rate_limits(self.config, remote)
        self._groups = self._resolver.with_table(remote_config.provider_table(remote))
        self.limiter = RateLimiter(lambda ip, domain: rate_for(rules, ip, domain), resolver=self._groups,
                                   provider_limits=remote_config.provider_limits(remote), backoff=self.backoff,
                                   slots=self.slots)
        self.warmup = Warmup(self.queue, remote_config.warmup_plans(remote))  # its counts are in the queue DB
        if self._config_version is None:
            log.info("%d rate limits from %s", len(rules),
                     "the config file" if remote is None else f"the panel's config version {version}")
        else:
            released = self.queue.release_rate_holds(time.time())
            log.info("config version %d: %d rate limits now in force, %d held letters due again",
                     version, len(rules), released)
        self._config_version = version

    def _observe(self, events: list[Event]) -> None:
        """Exim's outcomes (its log thread): throttling answers slow their (IP, provider) down."""
        conn = self.queue.conn()
        for e in events:
            if e.status not in ("delivered", "deferred", "failed"):
                continue
            row = conn.execute("SELECT source_ip, email, exim_id FROM letters WHERE id = ?",
                               (e.delivery_id,)).fetchone()
            if row is not None:
                self.slots.free(e.delivery_id, row[2])  # out of Exim's hands: its connection is free
                group = self.limiter.known_group(row[1].rpartition("@")[2].lower())
                self.backoff.observe(row[0], group, e.status, e.code, e.text)
                if e.status == "deferred" and row[2] and self._retries is not None:
                    self._retries.deferred([row[2]])

    def _write_shaping(self) -> None:
        """The pairs' states for the ping (another process), when one changed."""
        self.backoff.tick()
        for change in self.backoff.drain_changes():
            log.info("shaping %s/%s: %s at %.0f %% of its limit (%s)", change["source_ip"], change["provider"],
                     change["state"], change["factor"] * 100, change["why"])
        if self.backoff.version == self._shaping_written:
            return
        version = self.backoff.version
        states = self.backoff.states()
        for state in states:  # the rate in force, for people
            limit = self.limiter.per_minute(state["source_ip"], state["provider"])
            state["per_minute"] = None if limit is None else round(limit * state["factor"], 1)
        with self.queue.write() as conn:
            self.queue.set_state(conn, SHAPING_KEY, states)
        self._shaping_written = version

    def _claim_and_render(self, limit: int) -> int:
        claimed = self.queue.claim(limit)
        if not claimed:
            return 0
        self.limiter.new_round()
        domains = [c.email.rpartition("@")[2].lower() for c in claimed]
        if self.warmup:
            self._groups.prefetch(domains)
        self.limiter.prepare(domains)  # MX lookups, in parallel
        wall = time.time()
        failed: list[tuple[int, int | None, str]] = []
        release: list[tuple[int, float]] = []
        campaigns: dict[int, dict[str, Any]] = {}
        counted: list[_Work] = []  # letters of warming IPs: handed out once their count is on disk
        for c, domain in zip(claimed, domains):
            group = self._groups.provider_now(domain) if self.warmup else domain
            # a pair whose warm-up day is used up waits for the next day, spending no token
            wait = self.warmup.wait(c.source_ip, group, wall) or self.limiter.wait(c.source_ip, domain, key=c.id)
            if wait > 0:
                release.append((c.id, wall + wait))
                continue
            try:
                campaign = campaigns.get(c.campaign_id)
                if campaign is None:
                    campaign = campaigns[c.campaign_id] = self._campaign(c.campaign_id)
                letter = self.renderer.render(campaign, c.recipient())
                letter = tag_per_connection(letter, self.limiter.per_connection(c.source_ip, domain))
            except RenderError as exc:
                self.slots.free(c.id)  # its connection slot, taken with its tokens
                failed.append((c.id, None, f"letter could not be built: {exc.reason}"))
                continue
            except CampaignError as exc:
                self.slots.free(c.id)
                failed.append((c.id, None, f"campaign is unusable: {exc}"))
                continue
            if self.warmup.count(c.source_ip, group, wall):
                counted.append(_Work(c, letter))
            else:
                self._hand_out(_Work(c, letter))  # at once: the SMTP threads start while the rest renders
        self.warmup.save()  # counted on disk before any of these letters can reach Exim
        for item in counted:
            self._hand_out(item)
        if failed or release:
            self.queue.finish(failed=failed, release=release, max_attempts=self.config.max_attempts)
        return len(claimed)

    def _hand_out(self, item: _Work) -> None:
        self._in_flight += 1
        self._flying.add(item.claimed.id)
        self._work.put(item)

    def _campaign(self, campaign_id: int) -> dict[str, Any]:
        """The campaign object, parsed again only when the panel pushed a changed one."""
        row = self.queue.conn().execute("SELECT json FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        text = row[0] if row and row[0] else None
        if text is None:
            raise CampaignError(f"campaign {campaign_id} is not known to this agent")
        cached = self._campaigns.get(campaign_id)
        if cached is None or cached[0] != text:
            cached = self._campaigns[campaign_id] = (text, json.loads(text))
        return cached[1]

    def _gather(self, timeout: float) -> _Results:
        """Results that are in, waiting up to ``timeout`` for the first; then up to COALESCE
        more for others, so that one commit (one fsync) records several letters."""
        results = _Results()
        try:
            item = self._done.get(timeout=timeout) if timeout else self._done.get_nowait()
        except stdlib_queue.Empty:
            return results
        now = time.time()
        until = time.monotonic() + COALESCE
        while True:
            claimed, outcome = item
            self._in_flight -= 1
            self._flying.discard(claimed.id)
            self._sort(results, claimed, outcome, now)
            wait = until - time.monotonic()
            try:
                item = self._done.get(timeout=wait) if wait > 0 and self._in_flight else self._done.get_nowait()
            except stdlib_queue.Empty:
                return results

    def _sort(self, results: _Results, claimed: Claimed, outcome: Outcome, now: float) -> None:
        if outcome.kind not in ("sent", "unknown"):  # not in Exim's hands: no connection of its own
            self.slots.free(claimed.id)
        if outcome.kind == "sent":
            results.submitted.append((claimed.id, outcome.exim_id, outcome.code or 250, outcome.text))
            self._unreachable = 0
        elif outcome.kind == "failed":
            results.failed.append((claimed.id, outcome.code, outcome.text))
        elif outcome.kind == "retry":
            delay = self.retry_delays[min(claimed.attempts, len(self.retry_delays)) - 1]
            results.retry.append((claimed.id, now + delay, outcome.code, outcome.text))
        elif outcome.kind == "unknown":  # stays 'submitting' until Exim's log and queue tell
            delay = self.retry_delays[min(claimed.attempts, len(self.retry_delays)) - 1]
            if self._reconciler is not None:
                self._reconciler.retry_later(claimed.id, now + delay, outcome.text)
            log.warning("letter %d: %s; looking for it in Exim's log and queue before any retry",
                        claimed.id, outcome.text)
        elif outcome.kind == "withdrawn":
            pass  # no longer claimed by us: nothing to record
        else:  # unreachable: not the letter's fault, so it keeps its attempts; pause claiming
            results.release.append((claimed.id, now))
            pause = min(UNREACHABLE_BACKOFF[0] * 2 ** self._unreachable, UNREACHABLE_BACKOFF[1])
            if time.monotonic() >= self._paused_until:
                self._unreachable += 1
                self._paused_until = time.monotonic() + pause
                log.warning("%s; pausing %.0f s", outcome.text, pause)

    def _record(self, results: _Results) -> None:
        if results:
            self.queue.finish(submitted=results.submitted, failed=results.failed, retry=results.retry,
                              release=results.release, max_attempts=self.config.max_attempts)

    # -- SMTP threads -------------------------------------------------------------------------

    def _submit_loop(self) -> None:
        submitter = EximSubmitter(self.config.smtp_host, self.config.smtp_port, self.config.hostname)
        self._submitters.append(submitter)
        try:
            while True:
                item = self._work.get()
                if item is None:
                    return
                delivery_id = item.claimed.id
                try:
                    outcome = submitter.submit(item.letter, lambda port: self._offers.mark(delivery_id, port))
                except Exception as exc:  # never lose track of a claimed letter
                    log.exception("submitting letter %d failed", item.claimed.id)
                    outcome = Outcome("retry", None, f"agent error while submitting: {exc}")
                self._done.put((item.claimed, outcome))
        finally:
            submitter.close()


class _OfferLog:
    """Marks letters 'submitting' durably right before their SMTP transactions. A thread that
    finds a commit under way waits for it and then commits for every thread that came
    meanwhile: one fsync for all the connections starting a letter at the same moment."""

    def __init__(self, queue: QueueDB) -> None:
        self.queue = queue
        self._cond = threading.Condition()
        self._waiting: dict[int, int | None] = {}  # id -> local port, for the next commit
        self._answers: dict[int, bool | BaseException] = {}
        self._busy = False

    def mark(self, delivery_id: int, port: int | None) -> bool:
        """True once the mark is on disk; False if the letter is no longer claimed."""
        with self._cond:
            self._waiting[delivery_id] = port
            while delivery_id not in self._answers:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch, self._waiting = self._waiting, {}
                self._cond.release()
                try:
                    answers: dict[int, bool | BaseException] = dict.fromkeys(batch, False)
                    answers.update(dict.fromkeys(self.queue.mark_submitting(batch.items()), True))
                except BaseException as exc:  # every thread of the batch learns it
                    answers = dict.fromkeys(batch, exc)
                finally:
                    self._cond.acquire()
                    self._busy = False
                self._answers.update(answers)
                self._cond.notify_all()
            answer = self._answers.pop(delivery_id)
        if isinstance(answer, BaseException):
            raise RuntimeError(f"could not mark letter {delivery_id} as submitting: {answer}") from answer
        return answer


class SenderLockError(ConfigError):
    pass


def _take_lock(config: AgentConfig) -> Any:
    """One sender per data_dir: startup recovery relies on it."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(config.data_dir / "sender.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SenderLockError(f"another sender is already running on {config.data_dir}") from None
    return lock


def run_sender(config: AgentConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Sender(config, stop).run()
