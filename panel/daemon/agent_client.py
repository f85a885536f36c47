"""Talking to one worker's agent: HTTPS with its certificate pinned, bodies sealed with its key.

The agent is not trusted: its server's root may answer anything on that port. So every call
- follows no redirect (a 3xx is an error; following one would aim the daemon at addresses only
  the panel can reach);
- has a deadline for the whole exchange (connecting, TLS, headers, body): a watchdog shuts the
  connection down when it passes, so an agent dripping a byte a second cannot hold the daemon;
- reads at most `max_reply` bytes, undecoded (no Content-Encoding is inflated), and opens the body
  with bounded inflation and a bounded number of JSON values (worker_agent.protocol.unseal);
- reports what the agent said only as a short, cleaned excerpt in the panel's own words.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from dataclasses import dataclass, replace
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.util.ssl_ import create_urllib3_context

from worker_agent.protocol import CONTENT_TYPE, ProtocolError, seal, unseal

from .agent_text import quoted

# JSON values one reply may hold: an outcomes reply carries at most 5,000 events and 1,000 bounces
# (worker_agent/queue.py), some 40,000 values; 200,000 parsed cost some 20 MB at most.
MAX_JSON_VALUES = 200_000
_READ_CHUNK = 64 * 1024
_ERROR_BODY = 4096  # bytes read of an unsealed refusal: enough for its excerpt


class AgentError(Exception):
    """The agent could not be reached or did not do what was asked; the text says which."""


class AgentUnreachable(AgentError):
    pass


class AgentRefused(AgentError):
    """The agent opened the request and refused it (a sealed HTTP 400 saying why): sent again
    unchanged, it would be refused again."""


@dataclass(frozen=True)
class Limits:
    """What one call may cost (the AGENT_* settings)."""

    deadline: float = 30.0  # seconds for the whole call
    connect: float = 5.0  # seconds to connect
    max_reply: int = 16 * 1024 * 1024  # bytes read of a reply
    max_inflated: int = 32 * 1024 * 1024  # bytes a reply may inflate to

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        return cls(deadline=float(config["AGENT_TIMEOUT"]), connect=float(config["AGENT_CONNECT_TIMEOUT"]),
                   max_reply=int(config["AGENT_REPLY_MAX_BYTES"]), max_inflated=int(config["AGENT_REPLY_MAX_INFLATED"]))


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n and n % (1 << 20) == 0 else f"{n} bytes"


class _Watchdog:
    """Shuts down the connection of one call when its deadline passes: a blocked read then returns
    at once, however slowly the agent drips (a socket timeout only bounds the wait for each byte)."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        # A duplicate of the descriptor: shutting it down shuts the connection down for every user of
        # it, and it stays valid whatever TLS does with the original socket object.
        duplicate = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        with self._lock:
            self._sockets.append(duplicate)
            if self.fired:
                self._shut(duplicate)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the other end

    def stop(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


_current = threading.local()  # the watchdog of the call this thread is making


def _watch(sock: socket.socket) -> None:
    watchdog = getattr(_current, "watchdog", None)
    if watchdog is not None:
        watchdog.watch(sock)


class _WatchedConnection(HTTPSConnection):
    """Hands each socket to the current call's watchdog: a new one as soon as TCP connects (so the
    TLS handshake is under the deadline too), a kept-alive one when it is used again."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if self.sock is not None:
            _watch(self.sock)
        super().request(*args, **kwargs)


class _WatchedPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedConnection


class _PinnedAdapter(HTTPAdapter):
    """Accept exactly the certificate whose SHA-256 fingerprint the panel recorded (self-signed)."""

    def __init__(self, fingerprint: str, server_hostname: str | None = None) -> None:
        self._fingerprint = fingerprint
        self._server_hostname = server_hostname
        # One context for all of this client's connections: without one, urllib3 makes a context per
        # connection and loads the system's CA store into it (~30 ms of CPU), which a pinned
        # certificate never needs (verification is by fingerprint, after the handshake).
        self._ssl_context = create_urllib3_context(cert_reqs=ssl.CERT_NONE)
        self._ssl_context.check_hostname = False
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._fingerprint
        kwargs["ssl_context"] = self._ssl_context
        if self._server_hostname:  # the URL holds the checked address; TLS still names the host (SNI)
            kwargs["server_hostname"] = self._server_hostname
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme, "https": _WatchedPool}


class AgentClient:
    def __init__(self, base_url: str, key: str | bytes, fingerprint: str, timeout: float | None = None,
                 limits: Limits | None = None, server_hostname: str | None = None) -> None:
        """`base_url` may hold the address to connect to, and `server_hostname` the name it was
        checked for (sent in TLS's SNI)."""
        self.base_url = base_url.rstrip("/")
        self._key = key.encode() if isinstance(key, str) else key
        self.limits = limits or Limits()
        if timeout is not None:
            self.limits = replace(self.limits, deadline=timeout)
        # Requests go straight to the adapter, not through a requests Session: a Session reads a
        # redirect's whole body even when told not to follow it, and would take proxies and CA bundles
        # from the environment. Trust comes from the pinned fingerprint alone (verify=False: no CA).
        self._adapter = _PinnedAdapter(fingerprint.replace(":", "").lower(), server_hostname)

    def close(self) -> None:
        self._adapter.close()

    def call(self, path: str, data: Any, *, timeout: float | None = None) -> Any:
        """POST sealed `data` to `path` and return the sealed reply's data; AgentError says what failed.
        `timeout` (else the client's deadline) bounds the whole call."""
        deadline = timeout or self.limits.deadline
        nonce, body = seal(self._key, path, data)
        watchdog = _current.watchdog = _Watchdog(deadline)
        response = None
        try:
            request = requests.Request("POST", self.base_url + path, data=body,
                                       headers={"Content-Type": CONTENT_TYPE, "Accept-Encoding": "identity"})
            response = self._adapter.send(request.prepare(), stream=True, verify=False,
                                          timeout=(min(self.limits.connect, deadline), deadline))
            status = response.status_code
            if 300 <= status < 400:
                raise AgentError(f"the agent answered with a redirect (HTTP {status}), which it must not: "
                                 "it was not followed")
            if status == 403:  # refused before it could seal an answer: plain text
                text = self._read(response, _ERROR_BODY, cut=True).decode("utf-8", "replace")
                raise AgentError(f"agent refused the request: {quoted(text)}")
            raw = self._read(response, self.limits.max_reply)
            if watchdog.fired:
                raise self._late(deadline)
        except requests.exceptions.SSLError as exc:
            if watchdog.fired:
                raise self._late(deadline) from None
            raise AgentUnreachable(f"TLS with {self.base_url} failed (certificate not the pinned one?): "
                                   f"{quoted(str(exc))}") from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if watchdog.fired:
                raise self._late(deadline) from None
            raise AgentUnreachable(f"cannot reach {self.base_url}: {type(exc).__name__}") from None
        finally:
            _current.watchdog = None
            watchdog.stop()
            if response is not None:
                if watchdog.fired or not response.raw.closed:
                    response.close()  # not read to its end (or cut): the connection is not used again
                else:
                    response.raw.release_conn()
        return self._open(path, nonce, status, raw)

    def _late(self, deadline: float) -> AgentUnreachable:
        return AgentUnreachable(f"no complete answer within {deadline:g} s from {self.base_url}: the call was cut")

    def _read(self, response: requests.Response, limit: int, *, cut: bool = False) -> bytes:
        """The body as sent, at most `limit` bytes: more is an error (or, with `cut`, left unread)."""
        too_long = AgentError(f"the agent's reply is larger than {_size(limit)} (AGENT_REPLY_MAX_BYTES): "
                              "it was not read further")
        declared = response.headers.get("Content-Length", "")
        if not cut and declared.isdigit() and int(declared) > limit:
            raise too_long
        chunks, size = [], 0
        for chunk in response.raw.stream(_READ_CHUNK, decode_content=False):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if cut:
                    break
                raise too_long
        return b"".join(chunks)[:limit]

    def _open(self, path: str, nonce: str, status: int, raw: bytes) -> Any:
        try:
            reply = unseal(self._key, path, raw, max_inflated=self.limits.max_inflated, max_values=MAX_JSON_VALUES)
        except ProtocolError as exc:
            raise AgentError(f"agent reply (HTTP {status}) could not be opened: {exc.reason}") from None
        if reply.reply_to != nonce:
            raise AgentError("agent reply does not answer this request")
        if status != 200:
            message = reply.data.get("error") if isinstance(reply.data, dict) else None
            said = quoted(message) if isinstance(message, str) else "without saying why"
            raise (AgentRefused if status == 400 else AgentError)(f"agent answered HTTP {status}: {said}")
        return reply.data
