"""The daemon's client of one agent makes one TLS context and keeps it: a new connection (the agent
closed an idle one, or a call was cut) must not load the system's CA store again (~30 ms of CPU
each time), which the pinned certificate never needed (issue 9 point 12: the panel's CPU)."""

from __future__ import annotations

import ssl

import pytest

from panel.daemon.agent_client import AgentClient, AgentUnreachable


def test_new_connections_reuse_one_tls_context_and_still_pin(agents, monkeypatch):
    agent = agents.start()
    loads: list[object] = []
    real = ssl.SSLContext.load_default_certs
    monkeypatch.setattr(ssl.SSLContext, "load_default_certs",
                        lambda self, *args, **kwargs: loads.append(self) or real(self, *args, **kwargs))
    client = AgentClient(f"https://127.0.0.1:{agent.port}", agent.key, agent.fingerprint)
    try:
        for _ in range(3):
            assert isinstance(client.call("/v1/ping", {}), dict)
            client._adapter.poolmanager.clear()  # the connection gone: the next call opens a new one
    finally:
        client.close()
    assert loads == []
    # The context kept is still one that pins: another certificate's fingerprint is refused.
    wrong = AgentClient(f"https://127.0.0.1:{agent.port}", agent.key, "00" * 32)
    try:
        with pytest.raises(AgentUnreachable, match="TLS"):
            wrong.call("/v1/ping", {})
    finally:
        wrong.close()
