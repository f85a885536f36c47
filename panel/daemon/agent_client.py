"""Talking to one worker's agent: HTTPS with its certificate pinned, bodies sealed with its key."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

from worker_agent.protocol import CONTENT_TYPE, ProtocolError, seal, unseal


class AgentError(Exception):
    """The agent could not be reached or did not do what was asked; the text says which."""


class AgentUnreachable(AgentError):
    pass


class _PinnedAdapter(HTTPAdapter):
    """Accept exactly the certificate whose SHA-256 fingerprint the panel recorded (self-signed)."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(*args, **kwargs)


class AgentClient:
    def __init__(self, base_url: str, key: str | bytes, fingerprint: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = key.encode() if isinstance(key, str) else key
        self._timeout = timeout
        self._session = requests.Session()
        # Trust comes from the pinned fingerprint, not a CA. No environment either: with
        # REQUESTS_CA_BUNDLE set, requests would put CA checking back, and proxies have no place here.
        self._session.trust_env = False
        self._session.verify = False
        self._session.mount("https://", _PinnedAdapter(fingerprint.replace(":", "").lower()))

    def close(self) -> None:
        self._session.close()

    def call(self, path: str, data: Any, *, timeout: float | None = None) -> Any:
        nonce, body = seal(self._key, path, data)
        try:
            response = self._session.post(
                self.base_url + path, data=body, headers={"Content-Type": CONTENT_TYPE},
                timeout=timeout or self._timeout,
            )
        except requests.exceptions.SSLError as exc:
            raise AgentUnreachable(f"TLS with {self.base_url} failed (certificate not the pinned one?): {exc}") from None
        except requests.exceptions.RequestException as exc:
            raise AgentUnreachable(f"cannot reach {self.base_url}: {type(exc).__name__}") from None
        if response.status_code == 403:
            raise AgentError(f"agent refused the request: {response.text[:300]}")
        try:
            reply = unseal(self._key, path, response.content)
        except ProtocolError as exc:
            raise AgentError(f"agent reply (HTTP {response.status_code}) could not be opened: {exc.reason}") from None
        if reply.reply_to != nonce:
            raise AgentError("agent reply does not answer this request")
        if response.status_code != 200:
            message = reply.data.get("error") if isinstance(reply.data, dict) else None
            raise AgentError(f"agent answered HTTP {response.status_code}: {message or reply.data!r}")
        return reply.data
