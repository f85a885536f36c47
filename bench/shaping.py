"""Shaping accuracy (issue 9 point 13): what the capture sees from one worker of the local stack
(its Exim and agent, no panel: letters are queued straight into the agent's queue and its provider
limits written as the panel would push them), timed per (source IP, provider) from the capture's
attempts log.

(a) a limit of 120 letters a minute per (IP, provider), 2 IPs x 2 providers with a backlog: in no
    60 s window more than 5 % over it (126), and reached within 10 % (108 a minute on average).
(b) a provider that silently throttles at 60 a minute per IP (421 4.7.28 at RCPT, as Gmail), the
    agent's limit for it 120: after two minutes no 60 s window holds more than 1.1x that (66
    attempts), under 3 % of its attempts deferred, while two other providers keep >= 95 % of
    their 120 a minute. Deferred letters are retried by the agent (Exim's rule never retries).
(c) a warm-up schedule compressed to a minute a "day" (127.0.0.2: 20, 40, 60, 80, 100 letters a
    day to each provider, under the 120 a minute limit): each day's letters at the capture within
    +-5 % of its allowance.

Prints a JSON line per phase; the last line is the summary
{"a_peak_per_min", "a_mean_per_min", "b_settled_peak_per_min", "b_throttled_mean_per_min",
 "b_deferred_share", "b_others_share_of_rate", "c_per_day", "c_worst_day_error", "targets_met", ...}.
Usage: python bench/shaping.py [--minutes-a 3] [--minutes-b 10] [--connections N] [--keep] (about 20 minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devserver.mail_capture import read_attempts  # noqa: E402
from devserver.stack import BOUNCE_DOMAIN, LocalStack, StackSettings  # noqa: E402
from worker_agent import remote_config  # noqa: E402
from worker_agent.config import load_config  # noqa: E402
from worker_agent.queue import QueueDB  # noqa: E402

LIMIT = 120  # letters a minute per (IP, provider): the agent's provider limit
THROTTLE = 60  # letters a minute per IP the throttling provider takes
WINDOW = 60.0
PROVIDER_LIMITS: list[dict[str, Any]] = [{"source_ip": "*", "provider": "*", "per_minute": LIMIT}]  # as pushed
CAMPAIGN: dict[str, Any] = {
    "id": 1, "subject": "Shaping {{ name }}", "from_email": "news@sender.example", "from_name": "News",
    "reply_to": None, "text": "Hello {{ name }}\n{{ unsubscribe_url }}\n", "html": "<p>Hello {{ name }}</p>\n",
    "encoding": "quoted-printable", "message_id_domain": "sender.example", "bounce_domain": BOUNCE_DOMAIN,
    "unsubscribe_url": "http://127.0.0.1:5000/u/",
}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def queue_letters(db: QueueDB, batch: str, first_id: int, per_pair: dict[tuple[str, str], int],
                  campaign_id: int) -> int:
    """Queue letters for each (IP, domain), interleaved as a campaign's list would be; the next free id."""
    rows, n = [], first_id
    for k in range(max(per_pair.values())):
        for (ip, domain), count in per_pair.items():
            if k < count:
                rows.append({"id": n, "email": f"r{n}@{domain}", "fields": {"name": f"R{n}"}, "source_ip": ip,
                             "token": f"{n}-shaping"})
                n += 1
    for start in range(0, len(rows), 500):
        db.queue_batch(f"{batch}-{start}", {**CAMPAIGN, "id": campaign_id}, rows[start:start + 500])
    return n


def times_by_pair(attempts: Iterable[dict], domains: set[str], results: tuple[str, ...]) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = {}
    for a in attempts:
        if a["domain"] in domains and a["result"] in results:
            out.setdefault((a["ip"], a["domain"]), []).append(a["time"])
    return {k: sorted(v) for k, v in out.items()}


def peak(stamps: list[float], start: float = float("-inf"), window: float = WINDOW) -> int:
    """The most stamps within any window [t, t + window) with t >= start."""
    best, last = 0, 0
    for first, t in enumerate(stamps):
        if t < start:
            continue
        last = max(last, first)
        while last < len(stamps) and stamps[last] < t + window:
            last += 1
        best = max(best, last - first)
    return best


def per_minute(stamps: list[float], start: float, end: float) -> float:
    return sum(start <= t < end for t in stamps) / (end - start) * 60.0


def wait_until(what: str, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1.0)


def phase_a(stack: LocalStack, db: QueueDB, ips: list[str], minutes: float, first_id: int) -> tuple[dict, int]:
    domains = ["alpha.test", "beta.test"]
    per_pair = {(ip, d): int(LIMIT * minutes) for ip in ips for d in domains}
    t0 = time.time()
    next_id = queue_letters(db, "a", first_id, per_pair, 1)
    total = sum(per_pair.values())

    def accepted() -> dict[tuple[str, str], list[float]]:
        return times_by_pair(read_attempts(stack.capture.attempts_file), set(domains), ("accepted",))

    wait_until("phase (a)'s letters", lambda: sum(map(len, accepted().values())) >= total, minutes * 60 * 1.5 + 120)
    pairs = accepted()
    peaks = {f"{ip}/{d}": peak(s) for (ip, d), s in pairs.items()}
    means = {f"{ip}/{d}": round((len(s) - 1) / (s[-1] - s[0]) * 60.0, 1) for (ip, d), s in pairs.items()}
    record = {"phase": "a", "limit_per_min": LIMIT, "letters": total, "wall_s": round(time.time() - t0, 1),
              "peak_per_min": peaks, "mean_per_min": means,
              "peak_over_limit": round(max(peaks.values()) / LIMIT - 1, 4),
              "mean_share_of_limit": round(min(means.values()) / LIMIT, 4)}
    return record, next_id


def phase_b(stack: LocalStack, db: QueueDB, ips: list[str], minutes: float, first_id: int) -> tuple[dict, int]:
    throttled, others = "throttled.test", ["gamma.test", "delta.test"]
    stack.capture.set_rule("@" + throttled, {"throttle_per_minute": THROTTLE})
    backlog = int(LIMIT * (minutes + 1))  # never runs out before the end
    per_pair = {(ip, d): backlog for ip in ips for d in [throttled, *others]}
    t0 = time.time()
    next_id = queue_letters(db, "b", first_id, per_pair, 2)
    end = t0 + minutes * 60
    time.sleep(max(end - time.time(), 0))
    db.set_campaign_state(2, "cancelled")  # its backlog gone, as a cancel would: (c) starts clean
    attempts = [a for a in read_attempts(stack.capture.attempts_file) if t0 <= a["time"] < end]
    tried = times_by_pair(attempts, {throttled}, ("accepted", "deferred"))
    deferred = times_by_pair(attempts, {throttled}, ("deferred",))
    steady = times_by_pair(attempts, set(others), ("accepted",))
    settled_from = t0 + 120
    settled_peaks = {f"{ip}/{d}": peak(s, start=settled_from) for (ip, d), s in tried.items()}
    throttled_means = {f"{ip}/{d}": round(per_minute(s, settled_from, end), 1) for (ip, d), s in tried.items()}
    last_from = max(settled_from, end - 180)  # where it ended up: its last three minutes
    last_means = {f"{ip}/{d}": round(per_minute(s, last_from, end), 1) for (ip, d), s in tried.items()}
    timeline = {f"{ip}/{d}": [sum(t0 + 60 * m <= t < t0 + 60 * (m + 1) for t in s) for m in range(int(minutes))]
                for (ip, d), s in tried.items()}
    n_tried = sum(map(len, tried.values()))
    n_deferred = sum(map(len, deferred.values()))
    first_defer = min((s[0] for s in deferred.values() if s), default=None)
    steady_rates = {f"{ip}/{d}": round(per_minute(s, t0, end), 1) for (ip, d), s in steady.items()}
    record = {"phase": "b", "throttle_per_min": THROTTLE, "limit_per_min": LIMIT, "minutes": minutes,
              "throttled_attempts": n_tried, "throttled_deferred": n_deferred,
              "first_deferral_s": None if first_defer is None else round(first_defer - t0, 1),
              "settled_peak_per_min": settled_peaks, "throttled_mean_per_min_after_2min": throttled_means,
              "throttled_mean_per_min_last_3min": last_means, "throttled_attempts_each_minute": timeline,
              "deferred_share": round(n_deferred / n_tried, 4) if n_tried else None,
              "others_per_min": steady_rates,
              "others_share_of_rate": round(min(steady_rates.values()) / LIMIT, 4) if steady_rates else None}
    return record, next_id


WARMUP_DAILY = (20, 40, 60, 80, 100)  # letters a "day" to each provider
DAY_SECONDS = 60


def phase_c(stack: LocalStack, db: QueueDB, config: Any, ip: str, first_id: int) -> tuple[dict, int]:
    """The panel's push again, now with a warm-up plan for one IP starting now; one provider's backlog."""
    domain = "warm.test"
    schedule = [{"day": day, "limits": {"*": letters}} for day, letters in enumerate(WARMUP_DAILY, start=1)]
    start = time.time()
    remote_config.apply(db, config, remote_config.parse({
        "version": 2, "rate_limits": [], "helo": {},
        "provider_limits": PROVIDER_LIMITS,
        "warmup": [{"source_ip": ip, "start": start, "day_seconds": DAY_SECONDS, "schedule": schedule}]},
        config.source_ips))
    time.sleep(3)  # the sender takes a new config up within a second: no letter of the plan's IP before it
    next_id = queue_letters(db, "c", first_id, {(ip, domain): sum(WARMUP_DAILY) + 100}, 3)
    end = start + DAY_SECONDS * len(WARMUP_DAILY)
    time.sleep(max(end - time.time(), 0) + 2)
    stamps = times_by_pair(read_attempts(stack.capture.attempts_file), {domain}, ("accepted",)).get((ip, domain), [])
    per_day = [sum(start + DAY_SECONDS * d <= t < start + DAY_SECONDS * (d + 1) for t in stamps)
               for d in range(len(WARMUP_DAILY))]
    errors = [round(sent / allowed - 1, 4) for sent, allowed in zip(per_day, WARMUP_DAILY)]
    return {"phase": "c", "source_ip": ip, "day_seconds": DAY_SECONDS, "allowed_per_day": list(WARMUP_DAILY),
            "sent_per_day": per_day, "error_per_day": errors,
            "worst_day_error": max(map(abs, errors))}, next_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes-a", type=float, default=3.0)
    parser.add_argument("--minutes-b", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=None,
                        help="also at most N letters of a pair in Exim's hands at once (the provider limits' connections)")
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder (its logs) afterwards")
    args = parser.parse_args()
    global PROVIDER_LIMITS
    PROVIDER_LIMITS = [{"source_ip": "*", "provider": "*", "per_minute": LIMIT,
                        **({"connections": args.connections} if args.connections else {})}]

    def stop(*_: object) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        sys.exit(130)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    tmp = Path(tempfile.mkdtemp(prefix="mailfleet-shaping-"))
    tmp.chmod(0o755)  # Exim's processes (Debian-exim) keep their run directory in it
    emit({"phase": "config", "minutes_a": args.minutes_a, "minutes_b": args.minutes_b, "connections": args.connections,
          "root": str(tmp), "load": round(os.getloadavg()[0], 1)})
    stack = LocalStack(StackSettings(root=tmp, start_daemon=False))
    try:
        worker = stack.workers[0]
        stack.start_capture()
        stack.start_exim(worker)
        stack.write_agent_config(worker)
        stack.init_agent(worker)
        config = load_config(worker.config_path)
        db = QueueDB(config.queue_db)
        # what the panel would push: 120 a minute for every (IP, provider); each test domain is its own provider
        pushed = remote_config.parse({"version": 1, "rate_limits": [], "helo": {}, "provider_limits": PROVIDER_LIMITS},
                                     config.source_ips)
        remote_config.apply(db, config, pushed)
        stack.start_agent(worker)
        ips = list(config.source_ips)
        a, next_id = phase_a(stack, db, ips, args.minutes_a, 1)
        emit(a)
        b, next_id = phase_b(stack, db, ips, args.minutes_b, next_id)
        emit(b)
        c, next_id = phase_c(stack, db, config, ips[0], next_id)
        emit(c)
        db.close()
    finally:
        with contextlib.suppress(Exception):
            stack.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    a_peak = max(a["peak_per_min"].values())
    a_mean = min(a["mean_per_min"].values())
    b_peak = max(b["settled_peak_per_min"].values())
    targets = {
        "a_never_over_5pct": a_peak <= LIMIT * 1.05,
        "a_reached_within_10pct": a_mean >= LIMIT * 0.9,
        "b_settled_within_1_1x": b_peak <= THROTTLE * 1.1,
        "b_deferred_under_3pct": (b["deferred_share"] or 0) < 0.03,
        "b_others_keep_95pct": (b["others_share_of_rate"] or 0) >= 0.95,
        "c_each_day_within_5pct": c["worst_day_error"] <= 0.05,
    }
    emit({"a_limit_per_min": LIMIT, "a_peak_per_min": a_peak, "a_mean_per_min": a_mean,
          "b_throttle_per_min": THROTTLE, "b_settled_peak_per_min": b_peak,
          "b_throttled_mean_per_min": min(b["throttled_mean_per_min_after_2min"].values()),
          "b_throttled_mean_per_min_last_3min": min(b["throttled_mean_per_min_last_3min"].values()),
          "b_deferred_share": b["deferred_share"], "b_others_share_of_rate": b["others_share_of_rate"],
          "c_allowed_per_day": c["allowed_per_day"], "c_sent_per_day": c["sent_per_day"],
          "c_worst_day_error": c["worst_day_error"], "load": round(os.getloadavg()[0], 1),
          "targets": targets, "targets_met": all(targets.values())})


if __name__ == "__main__":
    main()
