"""`python bench/_profiled_daemon.py OUT.pstats`: the panel daemon (`python -m panel.daemon`) under
cProfile, every thread of it (the daemon serves each server from a thread of its own, which
`python -m cProfile` would miss), timed in each thread's CPU time (waiting for the database or an
agent costs none), the threads' stats merged into OUT.pstats when it stops (SIGTERM).
For bench/fleet.py --profile; the profiler's own cost inflates the CPU figures of such a run."""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_thread_profile(*_: object) -> None:
    """Installed by threading.setprofile in each new thread: its first event swaps itself for a
    profiler of that thread (Profile.enable() replaces the thread's profile function)."""
    profile = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(profile)
    profile.enable()


def main() -> None:
    out = Path(sys.argv[1])
    from panel.daemon.__main__ import main as daemon_main

    threading.setprofile(_start_thread_profile)
    main_profile = cProfile.Profile(time.thread_time)
    _profiles.append(main_profile)
    main_profile.enable()
    try:
        daemon_main()
    finally:
        main_profile.disable()
        threading.setprofile(None)
        with _lock:
            profiles = list(_profiles)
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            try:
                stats.add(profile)
            except TypeError:  # a thread that never made a call: no stats
                pass
        stats.dump_stats(out)


if __name__ == "__main__":
    main()
