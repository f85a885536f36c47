"""The agent's HTTPS API for the panel (docs/agent-protocol.md), served by gunicorn with TLS.

Every body is opened with ``protocol.unseal`` against the endpoint's own path and its
nonce is recorded in the queue DB, so a stale, altered, misaddressed or replayed request
is refused with 403 before it can change anything. Replies are sealed with ``reply_to``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from cryptography.fernet import Fernet
from flask import Flask, Response, request

from . import __version__, protocol, remote_config, render, warmup
from .config import AgentConfig, load_config
from .keyring import KeyRing
from .queue import CAMPAIGN_STATES, EPOCH_FORMAT, MAX_RECALL, QueueDB, QueueError

log = logging.getLogger("worker_agent.api")

MAX_BODY = 32 * 1024 * 1024  # sealed, compressed: a batch of MAX_RECIPIENTS is far smaller
MAX_RECIPIENTS = 5_000  # per batch: decoding one must fit the memory budget (120 MB, API and sender together)
MAX_EMAIL = 320  # characters of an address (64 local part, @, 255 domain)
RECALL_FIELDS = ("ids", "campaign_id", "emails", "campaign_ids", "after")

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
        "/v1/recall": lambda data: _recall(queue, data),
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
            "config_version": remote_config.stored_version(queue), "epoch": queue.epoch,
            "shaping": queue.get_state("shaping") or [],  # written by the sender (backoff.py)
            "warmup": warmup.report(queue, remote_config.warmup_plans(remote_config.stored(queue)))}


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
    data = _object(data)
    ack, epoch = data.get("ack", 0), data.get("epoch")
    if not _whole_number(ack) or ack < 0:
        raise RequestError("ack must be a whole number >= 0 (below 2**63)")
    if "epoch" in data and not (isinstance(epoch, str) and EPOCH_FORMAT.match(epoch)):
        raise RequestError("epoch must be the epoch an outcomes reply gave (1 to 64 letters, digits, '-' or '_'), "
                           "or left out")
    return queue.outcomes(ack, epoch=epoch)


def _campaign_state(queue: QueueDB, data: Any) -> dict[str, Any]:
    data = _object(data)
    campaign_id, state = data.get("campaign_id"), data.get("state")
    if not _whole_number(campaign_id):
        raise RequestError("campaign_id must be an integer (of 64 bits)")
    if state not in CAMPAIGN_STATES:
        raise RequestError(f"state must be one of {', '.join(CAMPAIGN_STATES)}")
    affected = queue.set_campaign_state(campaign_id, state)
    return {"campaign_id": campaign_id, "state": state, "affected": affected}


def _recall(queue: QueueDB, data: Any) -> dict[str, Any]:
    data = _object(data)
    unknown = [key for key in data if key not in RECALL_FIELDS]
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r} (a recall takes {', '.join(RECALL_FIELDS)})")
    if sum(key in data for key in ("ids", "campaign_id", "emails")) != 1:
        raise RequestError("give exactly one of ids, campaign_id or emails")
    if "after" in data and "ids" in data:
        raise RequestError("after goes with campaign_id or emails (where a reply may say more)")
    if "campaign_ids" in data and "emails" not in data:
        raise RequestError("campaign_ids goes with emails")
    if "ids" in data:
        ids = _whole_numbers(data["ids"], "ids", "delivery ids")
        reply = queue.recall(ids=ids)
    else:
        after = data.get("after", -(2**63))
        if not _whole_number(after):
            raise RequestError("after must be a whole number (of 64 bits): the next_after of the previous reply")
        if "campaign_id" in data:
            if not _whole_number(data["campaign_id"]):
                raise RequestError("campaign_id must be a whole number (of 64 bits)")
            reply = queue.recall(campaign_id=data["campaign_id"], after=after)
        else:
            emails = data["emails"]
            if not isinstance(emails, list) or len(emails) > MAX_RECALL:
                raise RequestError(f"emails must be a list of at most {MAX_RECALL} addresses")
            for n, email in enumerate(emails):
                if not isinstance(email, str) or not 0 < len(email) <= MAX_EMAIL:
                    raise RequestError(f"emails[{n}] must be an address (a string of 1 to {MAX_EMAIL} characters)")
            campaign_ids = (_whole_numbers(data["campaign_ids"], "campaign_ids", "campaign ids")
                            if "campaign_ids" in data else None)
            reply = queue.recall(emails=emails, campaign_ids=campaign_ids, after=after)
    if reply["recalled"]:
        log.info("recalled %d letters; %d still the sender's", len(reply["recalled"]),
                 len(reply["not_recalled"]["sending"]))
    return reply


def _whole_numbers(value: Any, name: str, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_RECALL:
        raise RequestError(f"{name} must be a list of at most {MAX_RECALL} {what}")
    for n, item in enumerate(value):
        if not _whole_number(item):
            raise RequestError(f"{name}[{n}] must be a whole number (of 64 bits), not {json.dumps(item)[:40]}")
    return value


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
