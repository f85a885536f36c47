"""IP warm-up (issue 9, point 6): at most so many letters a day from a source IP to each mailbox
provider group, rising day by day along a schedule, until the schedule ends (the IP is warm).

The panel pushes each warming IP's plan in ``/v1/config`` (``warmup``, docs/agent-protocol.md):
when its day 1 began and the schedule, a list of steps ``{"day": n, "limits": {"<provider>": letters,
"*": letters}}``, each in force from its day until the next step's; the last step's day is the last
day. ``"*"`` is the allowance of each provider group not named (every other domain is its own
group, as for the provider limits). A "day" is ``day_seconds`` long (86400; tests and benchmarks
compress it).

The sender counts a letter when it decides to hand it to Exim, and writes the counts to the queue
DB (``warmup_sent``) durably before any of those letters reaches Exim: a crash can only make it
count a letter that never went (it waits for the next round), never forget one that did. A letter
of a pair whose day is used up is put back, due when the next day begins, without using an attempt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .queue import QueueDB

DAY = 86400
MAX_DAYS = 366
MAX_STEPS = MAX_DAYS
MAX_PER_DAY = 100_000_000
MAX_PROVIDERS = 100  # names in one step
ANY = "*"

# Letters a day to each provider group: the shape of the mailbox providers' and ESPs' usual warm-up
# advice (SendGrid's, Mailgun's, SparkPost's published schedules: about 50 on day 1, roughly doubling
# the first days, then rising more slowly over about 30 days); the figures are ours, per provider.
DEFAULT_DAILY = (50, 100, 200, 400, 750, 1000, 1500, 2000, 3000, 4000, 5000, 7500, 10_000, 12_500, 15_000,
                 20_000, 25_000, 30_000, 35_000, 40_000, 50_000, 60_000, 70_000, 80_000, 90_000, 100_000,
                 110_000, 120_000, 135_000, 150_000)


def default_schedule() -> list[dict[str, Any]]:
    return [{"day": day, "limits": {ANY: letters}} for day, letters in enumerate(DEFAULT_DAILY, start=1)]


class WarmupError(ValueError):
    """A schedule that cannot be used; the message names the item and what to give instead."""


Steps = tuple[tuple[int, Mapping[str, int]], ...]


def parse_schedule(value: Any, where: str = "schedule", provider_ok: Callable[[str], bool] | None = None) -> Steps:
    """``[{"day": n, "limits": {"<provider>" | "*": letters}}]`` with days rising from 1."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_STEPS:
        raise WarmupError(f"{where} must be a list of 1 to {MAX_STEPS} steps "
                          '{"day": 1, "limits": {"*": 50, "google": 20}}')
    steps: list[tuple[int, dict[str, int]]] = []
    for i, step in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(step, dict) or set(step) != {"day", "limits"}:
            raise WarmupError(f'{at} must be an object with exactly day and limits, e.g. {{"day": 1, "limits": {{"*": 50}}}}')
        day = step["day"]
        if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= MAX_DAYS:
            raise WarmupError(f"{at}.day must be a whole number from 1 to {MAX_DAYS}, not {day!r}")
        if steps and day <= steps[-1][0]:
            raise WarmupError(f"{at}.day: {day} comes after day {steps[-1][0]}; give the steps by rising day")
        if i == 0 and day != 1:
            raise WarmupError(f"{at}.day: the first step must be day 1, not {day}")
        limits = step["limits"]
        if not isinstance(limits, dict) or not 1 <= len(limits) <= MAX_PROVIDERS:
            raise WarmupError(f'{at}.limits must be an object of 1 to {MAX_PROVIDERS} {{"<provider>" or "*": letters}}')
        checked: dict[str, int] = {}
        for name, letters in limits.items():
            key = name.strip().lower() if isinstance(name, str) else name
            if not isinstance(key, str) or not key or (key != ANY and provider_ok is not None and not provider_ok(key)):
                raise WarmupError(f"{at}.limits: {name!r} is neither \"*\" (every other provider) nor a provider "
                                  "name or domain")
            if isinstance(letters, bool) or not isinstance(letters, int) or not 0 <= letters <= MAX_PER_DAY:
                raise WarmupError(f"{at}.limits[{name!r}] must be a whole number of letters from 0 to {MAX_PER_DAY}, "
                                  f"not {letters!r}")
            checked[key] = letters
        steps.append((day, checked))
    return tuple(steps)


def steps_json(steps: Steps) -> list[dict[str, Any]]:
    return [{"day": day, "limits": dict(limits)} for day, limits in steps]


@dataclass(frozen=True)
class WarmupPlan:
    source_ip: str
    start: float  # UNIX time day 1 began
    steps: Steps
    day_seconds: int = DAY

    @property
    def days(self) -> int:
        """The schedule's last day: after it the IP is warm (no allowance)."""
        return self.steps[-1][0]

    def day(self, now: float) -> int:
        """Day 1 from ``start`` (and before it)."""
        return max(0, math.floor((now - self.start) / self.day_seconds)) + 1

    def day_start(self, day: int) -> float:
        return self.start + (day - 1) * self.day_seconds

    def limits(self, day: int) -> Mapping[str, int] | None:
        """The allowances of that day (None: warm, no cap)."""
        if day > self.days:
            return None
        return next(limits for first, limits in reversed(self.steps) if first <= day)

    def limit(self, day: int, group: str) -> int | None:
        limits = self.limits(day)
        if limits is None:
            return None
        return limits.get(group, limits.get(ANY))

    def to_json(self) -> dict[str, Any]:
        return {"source_ip": self.source_ip, "start": self.start, "day_seconds": self.day_seconds,
                "schedule": steps_json(self.steps)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WarmupPlan:
        return cls(data["source_ip"], float(data["start"]), parse_schedule(data["schedule"]),
                   int(data.get("day_seconds", DAY)))


class Warmup:
    """The letters counted per (source IP, provider group, day) against the plans, for the sender.

    ``wait`` says whether a letter may go; ``count`` counts one that goes; ``save`` writes the
    counts (durably) before the letters are handed to Exim.
    """

    def __init__(self, queue: QueueDB, plans: Mapping[str, WarmupPlan]) -> None:
        self.queue = queue
        self.plans = dict(plans)
        self._sent: dict[tuple[str, str, int], int] = {}  # (ip, group, day start) -> letters, saved or not
        self._pending: dict[tuple[str, str, int], int] = {}  # not yet written
        self._loaded: set[tuple[str, int]] = set()  # (ip, day start) read from the queue DB

    def __bool__(self) -> bool:
        return bool(self.plans)

    def wait(self, source_ip: str, group: str, now: float) -> float:
        """0.0: the pair has allowance left today; else seconds until its next day begins."""
        plan = self.plans.get(source_ip)
        if plan is None:
            return 0.0
        day = plan.day(now)
        limit = plan.limit(day, group)
        if limit is None:
            return 0.0
        if self._count(source_ip, group, _key_start(plan, day)) < limit:
            return 0.0
        return max(plan.day_start(day + 1) - now, 0.001)

    def count(self, source_ip: str, group: str, now: float) -> bool:
        """Count one letter that goes; True if it was counted (it must wait for ``save``)."""
        plan = self.plans.get(source_ip)
        if plan is None:
            return False
        day = plan.day(now)
        if plan.limit(day, group) is None:
            return False
        key = (source_ip, group, _key_start(plan, day))
        self._count(*key)
        self._sent[key] += 1
        self._pending[key] = self._pending.get(key, 0) + 1
        return True

    def save(self) -> None:
        """Write the counts not yet written, on disk before this returns."""
        if self._pending:
            self.queue.add_warmup_sent(self._pending.items())
            self._pending = {}

    def _count(self, source_ip: str, group: str, day_start: int) -> int:
        if (source_ip, day_start) not in self._loaded:
            self._loaded.add((source_ip, day_start))
            # before any count of that day (count() asks here first), so nothing pending is overwritten
            for name, sent in self.queue.warmup_sent(source_ip, day_start).items():
                self._sent[source_ip, name, day_start] = sent
        return self._sent.setdefault((source_ip, group, day_start), 0)


def _key_start(plan: WarmupPlan, day: int) -> int:
    """The day's key in the queue DB: when it began (a plan given a new start counts afresh)."""
    return math.floor(plan.day_start(day))


def report(queue: QueueDB, plans: Mapping[str, WarmupPlan], now: float | None = None) -> list[dict[str, Any]]:
    """Each warming IP's day and what it sent and has left today per provider, for the ping."""
    now = time.time() if now is None else now
    result = []
    for ip, plan in sorted(plans.items()):
        day = plan.day(now)
        limits = plan.limits(day)
        item: dict[str, Any] = {"source_ip": ip, "day": day, "days": plan.days, "warm": limits is None,
                                "day_seconds": plan.day_seconds, "day_ends": plan.day_start(day + 1),
                                "default": None, "providers": [], "held": 0}
        if limits is not None:
            # letters put back until the next day (or later): the panel gives the IP no more meanwhile
            item["held"] = queue.conn().execute(
                "SELECT count(*) FROM letters WHERE state = 'queued' AND source_ip = ? AND not_before >= ?",
                (ip, item["day_ends"] - 1.0)).fetchone()[0]
            sent = queue.warmup_sent(ip, _key_start(plan, day))
            item["default"] = limits.get(ANY)
            names = sorted({*(n for n in limits if n != ANY), *sent})
            item["providers"] = [{"provider": name, "limit": plan.limit(day, name), "sent": sent.get(name, 0)}
                                 for name in names]
        result.append(item)
    return result
