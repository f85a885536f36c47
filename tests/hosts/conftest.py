"""Fixtures for real test hosts: Debian trees booted with systemd-nspawn (devserver/testhost.py).

`rootfs` builds (once per machine, cached) the bookworm tree; `test_host` starts hosts and
stops every one of them at teardown, whatever the test did. Without root or the Debian
packages the tests are skipped with the precise reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devserver.testhost import MAX_HOSTS, TestHost, TestHostBusy, TestHostUnavailable, build_rootfs, check_prerequisites

HostFactory = Callable[..., TestHost]


def _skip_if_unavailable(**kwargs: Any) -> None:
    try:
        check_prerequisites(**kwargs)
    except TestHostUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def rootfs() -> Path:
    """The cached bookworm tree (debootstrapped on first use, ~50 s)."""
    _skip_if_unavailable(release="bookworm", proxy=True)
    return build_rootfs("bookworm")


@pytest.fixture
def test_host(rootfs: Path) -> Iterator[HostFactory]:
    """Start a booted test host: `test_host(release=..., proxy=..., memory=..., root_password=...)`.

    Each host gets the first subnet (and the name `mfhost<index>`) no other running test host
    holds, so parallel sessions do not collide. All are stopped at teardown.
    """
    hosts: list[TestHost] = []

    def start(**kwargs: Any) -> TestHost:
        release = kwargs.get("release", "bookworm")
        if release != "bookworm":
            _skip_if_unavailable(release=release)
        for index in range(MAX_HOSTS):
            host = TestHost(f"mfhost{index}", subnet_index=index, **kwargs)
            try:
                host.start()
            except TestHostBusy:
                continue
            hosts.append(host)
            return host
        raise TestHostBusy(f"all {MAX_HOSTS} test host subnets are in use")

    yield start
    for host in hosts:
        host.stop()
