"""Panel settings: defaults here, overridden by MAILFLEET_* environment variables."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class Config:
    SQLALCHEMY_DATABASE_URI: str | None = None  # set from DATABASE_URL or instance/ in load_config
    SQLALCHEMY_ENGINE_OPTIONS: dict = {"pool_pre_ping": True}
    SECRET_KEY: str | None = None
    WTF_CSRF_TIME_LIMIT = None  # tokens live as long as the session
    # Cookies never readable by scripts nor sent along with other sites' requests (but a link
    # followed from elsewhere still arrives logged in); `Secure` and HSTS when PUBLIC_URL is https.
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    REMEMBER_COOKIE_DURATION = 30 * 86400  # seconds "Keep me logged in" lasts
    HSTS_MAX_AGE = 365 * 86400  # Strict-Transport-Security on every response when PUBLIC_URL is https
    MAX_CONTENT_LENGTH = 64 * 1024 * 1024
    # Base of links put into letters (unsubscribe); must be reachable by recipients.
    PUBLIC_URL = "http://127.0.0.1:5000"
    # Scheme of masked links on a campaign's tracking domains (https://<domain>/c/…); without one they use PUBLIC_URL.
    TRACKING_SCHEME = "https"
    # Tracking links (/c/, /o/, /u/) per client address, in each gunicorn worker's memory (services/click_limits.py):
    TRACKING_FORGED_PER_MINUTE = 20  # refused tokens (forged, another host's) before the answer is 429
    TRACKING_CLICKS_PER_MINUTE = 600  # genuine clicks and opens all counted; beyond, still redirected, and
    TRACKING_REPEATS_PER_LETTER = 10  # … counted while one letter's repeats from the address stay within this an hour
    # Domain of VERP return paths and unsubscribe mailto: addresses; MX points at the workers.
    BOUNCE_DOMAIN = "bounces.mailfleet.test"
    BOUNCE_SOFT_LIMIT = 3  # soft bounces in a row (across a user's campaigns) that suppress an address
    DAEMON_INTERVAL = 1.0  # seconds between daemon rounds when idle
    # Several daemons share the servers by leases in the DB (daemon/runner.py): a lease lasts this long and
    # is renewed every fifth of it, so a killed daemon's servers are taken over within about 1.2 times it.
    DAEMON_LEASE_SECONDS = 15.0
    DAEMON_PROVISION = 1  # 0: this daemon never provisions (one on another machine than the web panel)
    DAEMON_DB_CONNECTIONS = 50  # database connections a daemon may open (one a served server at most)
    DISPATCH_BATCH_SIZE = 1000  # recipients per push to an agent
    DISPATCH_WINDOW = 10000  # letters pushed to one server and not yet handed to its Exim
    # Seconds a server may be silent before the letters never pushed to it go to the other servers.
    SERVER_FAILOVER_AFTER = 60.0
    # Seconds in a warm-up "day" (services/warmup.py): 86400; only tests and benchmarks compress it.
    WARMUP_DAY_SECONDS = 86400
    # An agent is not trusted (its server's root may run anything there): each call is bounded (daemon/agent_client.py).
    AGENT_TIMEOUT = 30.0  # seconds one agent request may take in all: connecting, sending, the whole reply
    AGENT_CONNECT_TIMEOUT = 5.0  # seconds to connect to an agent
    AGENT_REPLY_MAX_BYTES = 16 * 1024 * 1024  # bytes of one reply read; a longer one is refused
    AGENT_REPLY_MAX_INFLATED = 32 * 1024 * 1024  # bytes one reply may inflate to (its JSON); more is refused
    API_RATE = 20.0  # API requests a second each token may make on average (a token bucket in the DB)
    API_BURST = 100  # requests a token may make at once before API_RATE applies
    API_MAX_ROWS = 100_000  # recipients one bulk add may carry; more is a 413
    # The file of the keys that seal stored secrets (TSIG, DKIM, agent keys); empty: instance/secrets.key.
    # Kept elsewhere (another disk, a mount only the panel's user reads), a copy of the DB or of the
    # instance folder reveals no secret.
    SECRETS_KEY_FILE = ""
    # CIDRs (comma-separated) the panel may reach for tenants' SSH hosts and DNS servers although they are
    # loopback, link-local or its own networks (services/network_policy.py); empty: none. The local stack sets its own.
    ALLOWED_HOST_NETWORKS = ""


ENV_PREFIX = "MAILFLEET_"


def private_folder(path: Path) -> None:
    """Make the folder (the instance, uploads) if missing and keep it 0700: it holds the database,
    keys and users' lists, which no other local user may read."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        path.chmod(0o700)


def _secret_key(instance_path: Path) -> str:
    """A key kept in instance/secret_key (0600), made once, so sessions and links survive restarts."""
    path = instance_path / "secret_key"
    if not path.exists():
        private_folder(instance_path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def load_config(app, overrides: dict | None) -> None:
    app.config.from_object(Config)
    for key, value in os.environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):]
            default = getattr(Config, name, None)
            app.config[name] = type(default)(value) if isinstance(default, (int, float)) else value
    if os.environ.get("DATABASE_URL"):
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    if overrides:
        app.config.update(overrides)
    instance = Path(app.instance_path)
    if instance.exists() or not app.config.get("SQLALCHEMY_DATABASE_URI"):
        private_folder(instance)
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{instance / 'mailfleet.db'}"
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _secret_key(instance)
    https = app.config["PUBLIC_URL"].lower().startswith("https://")
    app.config["SESSION_COOKIE_SECURE"] = app.config["REMEMBER_COOKIE_SECURE"] = https
