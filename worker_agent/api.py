"""The agent's HTTPS API for the panel (docs/agent-protocol.md), served by gunicorn with TLS.

Every body is opened with ``protocol.unseal`` against the endpoint's own path and its
nonce is recorded in the queue DB, so a stale, altered, misaddressed or replayed request
is refused with 403 before it can change anything. Replies are sealed with ``reply_to``.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

from cryptography.fernet import Fernet
from flask import Flask, Response, request

from . import __version__, protocol, remote_config, render
from .config import AgentConfig, load_config
from .keyring import KeyRing
from .queue import CAMPAIGN_STATES, QueueDB, QueueError

log = logging.getLogger("worker_agent.api")

MAX_BODY = 32 * 1024 * 1024  # sealed, compressed: a batch of MAX_RECIPIENTS is far smaller
MAX_RECIPIENTS = 5_000  # per batch: decoding one must fit the memory budget (120 MB, API and sender together)

Handler = Callable[[Any], dict[str, Any]]


class RequestError(Exception):
    """The request opened fine but asks for something wrong: a sealed 400 {"error": ...}."""


def create_app(config: AgentConfig | None = None) -> Flask:
    """The Flask app; without ``config`` it reads the file named by $MAILFLEET_AGENT_CONFIG."""
    config = config or load_config()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    keys = KeyRing(config.key_file, config.key_grace)
    queue = QueueDB(config.queue_db)
    _register_endpoints(app, keys, queue, config)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return app


def _register_endpoints(app: Flask, keys: KeyRing, queue: QueueDB, config: AgentConfig) -> None:
    handlers: dict[str, Handler] = {
        "/v1/ping": lambda data: _ping(queue, data),
        "/v1/batches": lambda data: _batches(queue, data),
        "/v1/outcomes": lambda data: _outcomes(queue, data),
        "/v1/campaigns/state": lambda data: _campaign_state(queue, data),
        "/v1/config": lambda data: _config(queue, config, data),
        "/v1/key": lambda data: _new_key(keys, data),
    }
    for path, handler in handlers.items():
        app.add_url_rule(path, path, _sealed_view(path, handler, keys, queue), methods=["POST"])


def _sealed_view(path: str, handler: Handler, keys: KeyRing, queue: QueueDB) -> Callable[[], Response]:
    def view() -> Response:
        try:
            key, opened = protocol.unseal_any(keys.keys(), path, request.get_data(cache=False))
            if not queue.remember_nonce(opened.nonce, max(time.time(), opened.sent_at) + protocol.MAX_AGE):
                raise protocol.ProtocolError("message was replayed (nonce already seen)")
        except protocol.ProtocolError as exc:
            # only the reason and who asked: never the body or the key
            log.warning("refused %s from %s: %s", path, request.remote_addr, exc.reason)
            return Response(f"refused: {exc.reason}", status=403, mimetype="text/plain")
        keys.used(key)
        try:
            reply, status = handler(opened.data), 200
        except (RequestError, QueueError, render.CampaignError, remote_config.RemoteConfigError) as exc:
            reply, status = {"error": str(exc)}, 400
        _, body = protocol.seal(key, path, reply, reply_to=opened.nonce)  # the key the panel used
        return Response(body, status=status, content_type=protocol.CONTENT_TYPE)

    view.__name__ = "sealed_" + path.strip("/").replace("/", "_")
    return view


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object")
    return data


def _whole_number(value: Any) -> bool:
    """An int SQLite can store (a JSON number past 2**63 would raise OverflowError in the query)."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _ping(queue: QueueDB, data: Any) -> dict[str, Any]:
    queued, sending = queue.counts()
    return {"ok": True, "version": __version__, "queued": queued, "sending": sending, "time": int(time.time()),
            "config_version": remote_config.stored_version(queue)}


def _batches(queue: QueueDB, data: Any) -> dict[str, Any]:
    data = _object(data)
    batch_id = data.get("batch_id")
    if not isinstance(batch_id, str) or not batch_id or len(batch_id) > 200:
        raise RequestError("batch_id must be a non-empty string")
    campaign, recipients = data.get("campaign"), data.get("recipients")
    render.CompiledCampaign(campaign)  # checks fields and compiles the templates: a syntax error is the panel's to fix
    if not isinstance(recipients, list) or len(recipients) > MAX_RECIPIENTS:
        raise RequestError(f"recipients must be a list of at most {MAX_RECIPIENTS}")
    for n, recipient in enumerate(recipients):
        try:
            render.check_recipient(recipient)
            ipaddress.ip_address(recipient["source_ip"])
        except (render.CampaignError, ValueError) as exc:
            raise RequestError(f"recipients[{n}]: {exc}") from None
    queued, duplicates = queue.queue_batch(batch_id, campaign, recipients)
    return {"batch_id": batch_id, "queued": queued, "duplicates": duplicates}


def _outcomes(queue: QueueDB, data: Any) -> dict[str, Any]:
    ack = _object(data).get("ack", 0)
    if not _whole_number(ack) or ack < 0:
        raise RequestError("ack must be a whole number >= 0 (below 2**63)")
    return queue.outcomes(ack)


def _campaign_state(queue: QueueDB, data: Any) -> dict[str, Any]:
    data = _object(data)
    campaign_id, state = data.get("campaign_id"), data.get("state")
    if not _whole_number(campaign_id):
        raise RequestError("campaign_id must be an integer (of 64 bits)")
    if state not in CAMPAIGN_STATES:
        raise RequestError(f"state must be one of {', '.join(CAMPAIGN_STATES)}")
    affected = queue.set_campaign_state(campaign_id, state)
    return {"campaign_id": campaign_id, "state": state, "affected": affected}


def _config(queue: QueueDB, config: AgentConfig, data: Any) -> dict[str, Any]:
    remote = remote_config.parse(data, config.source_ips)
    remote_config.apply(queue, config, remote)
    log.info("config version %d applied: %d rate limits, %d HELO names, %d DKIM keys, %d bounce domains",
             remote.version, len(remote.rate_limits), len(remote.helo), len(remote.dkim), len(remote.bounce_domains))
    return {"config_version": remote.version, "rate_limits": len(remote.rate_limits), "helo": len(remote.helo)}


def _new_key(keys: KeyRing, data: Any) -> dict[str, Any]:
    """The panel's next key, handed in a message sealed with a current one (keyring.py)."""
    key = _object(data).get("key")
    try:
        Fernet(key.encode() if isinstance(key, str) else b"")
    except ValueError:
        raise RequestError("key must be a Fernet key (32 url-safe base64-encoded bytes)") from None
    keys.add(key.encode())
    log.info("a new key from the panel: both open messages until the panel uses the new one")
    return {"ok": True}
