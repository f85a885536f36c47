"""Secrets at rest (issue 12, point 5): agent keys sealed like TSIG and DKIM secrets, the
database and instance folder private, the secrets key outside the instance folder if asked,
and the secrets key rotated with every sealed secret re-sealed under the new key."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet, InvalidToken
from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from panel import MIGRATIONS_DIR
from panel.daemon.loop import DaemonState
from panel.extensions import db
from panel.models import Domain, Server
from panel.services import agent_keys, secret_box

from tests.panel.conftest import FERNET_KEY, make_app

REPO = Path(__file__).resolve().parents[2]
SEALING_REVISION = "d5a8c2e7f1b3"  # servers: agent keys sealed


@pytest.fixture(autouse=True)
def own_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own instance folder (where the default secrets key lives)."""
    instance = tmp_path / "instance"
    monkeypatch.setenv("MAILFLEET_INSTANCE_PATH", str(instance))
    monkeypatch.delenv("MAILFLEET_SECRETS_KEY_FILE", raising=False)
    monkeypatch.delenv("MAILFLEET_SECRETS_KEY", raising=False)
    return instance


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- agent keys ---------------------------------------------------------------------------
def test_a_new_server_keeps_its_agent_key_sealed(app, seed, alice) -> None:
    server_id = seed.server(alice)
    with app.app_context():
        stored = db.session.execute(text("SELECT agent_key FROM servers WHERE id = :id"), {"id": server_id}).scalar()
        assert FERNET_KEY not in stored
        assert agent_keys.open_agent_key(db.session.get(Server, server_id)) == FERNET_KEY
        # The daemon talks to the agent with the key itself, not its sealed form. (The seeded name does
        # not resolve: the agent is put on an allowed loopback address for the client to be made.)
        server = db.session.get(Server, server_id)
        server.host = "127.0.0.1"
        app.config["ALLOWED_HOST_NETWORKS"] = "127.0.0.0/8"
        client = DaemonState().client(server)
        assert client._key == FERNET_KEY.encode()


def test_the_migration_seals_plaintext_agent_keys_and_its_downgrade_opens_them(empty_app, migrating) -> None:
    before = ScriptDirectory(MIGRATIONS_DIR).get_revision(SEALING_REVISION).down_revision
    plain = Fernet.generate_key().decode()
    with empty_app.app_context(), migrating():
        upgrade(revision=before)
        db.session.execute(text("INSERT INTO users (id, email, password_hash, created_at) "
                                "VALUES (1, 'a@example.com', 'x', CURRENT_TIMESTAMP)"))
        db.session.execute(text(
            "INSERT INTO servers (id, user_id, name, host, api_port, agent_key, cert_fingerprint, status, "
            "outcome_ack, created_at) VALUES (1, 1, 'w', 'w.example.net', 8443, :key, :fp, 'new', 0, CURRENT_TIMESTAMP)"),
            {"key": plain, "fp": "ab" * 32})
        db.session.execute(text(
            "INSERT INTO servers (id, user_id, name, host, api_port, agent_key, cert_fingerprint, status, "
            "outcome_ack, created_at) VALUES (2, 1, 'p', 'p.example.net', 8443, NULL, NULL, 'provisioning', 0, "
            "CURRENT_TIMESTAMP)"))
        db.session.execute(text("INSERT INTO server_ips (server_id, ip, helo, weight, active) "
                                "VALUES (1, '192.0.2.1', 'w.example.net', 1, :yes)"), {"yes": True})
        db.session.commit()
        db.session.remove()
        upgrade(revision=SEALING_REVISION)
        stored = db.session.execute(text("SELECT agent_key FROM servers ORDER BY id")).scalars().all()
        assert stored[0] != plain and plain not in stored[0] and stored[1] is None
        assert secret_box.unseal(stored[0]) == plain
        # the servers' other rows stay (no table copy dropping servers with cascades)
        assert db.session.execute(text("SELECT count(*) FROM server_ips")).scalar() == 1
        db.session.remove()
        downgrade(revision=before)
        assert db.session.execute(text("SELECT agent_key FROM servers WHERE id = 1")).scalar() == plain
        assert db.session.execute(text("SELECT count(*) FROM server_ips")).scalar() == 1
        db.session.execute(text("DELETE FROM server_ips"))
        db.session.execute(text("DELETE FROM servers"))  # older downgrades need every server complete
        db.session.execute(text("DELETE FROM users"))
        db.session.commit()
        db.session.remove()
        downgrade(revision="base")
        db.engine.dispose()


def test_replace_agent_key_gives_a_new_key_sealed(app, seed, alice) -> None:
    server_id = seed.server(alice)
    with app.app_context():
        server = db.session.get(Server, server_id)
        new = agent_keys.replace_agent_key(server)
        db.session.commit()
        assert new != FERNET_KEY and Fernet(new.encode())
        assert new not in db.session.get(Server, server_id).agent_key
        assert agent_keys.open_agent_key(db.session.get(Server, server_id)) == new


# -- files private ------------------------------------------------------------------------
def test_the_panel_makes_its_instance_folder_and_database_private(own_instance: Path, tmp_path: Path) -> None:
    """A panel process (here `flask init-db`, as `make run` does) under the usual umask 022."""
    env = dict(os.environ, MAILFLEET_INSTANCE_PATH=str(own_instance))
    env.pop("DATABASE_URL", None)
    script = "import os, runpy, sys; os.umask(0o022); sys.argv = ['flask', '--app', 'panel', 'init-db']; " \
             "runpy.run_module('flask', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert _mode(own_instance) == 0o700
    database = own_instance / "mailfleet.db"
    assert _mode(database) == 0o600
    for path in own_instance.iterdir():
        assert _mode(path) & 0o077 == 0, f"{path.name} is {oct(_mode(path))}"
    # A second process opening the same database (the daemon) leaves -wal and -shm private too.
    script = ("import os; os.umask(0o022); from panel import create_app; from panel.extensions import db; "
              "from sqlalchemy import text; app = create_app(); ctx = app.app_context(); ctx.push(); "
              "c = db.engine.connect(); c.execute(text('SELECT count(*) FROM users')); "
              "import json, pathlib; p = pathlib.Path(app.instance_path); "
              "print(json.dumps({f.name: f.stat().st_mode & 0o777 for f in p.iterdir()}))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    modes = json.loads(result.stdout.splitlines()[-1])
    assert modes["mailfleet.db-wal"] == modes["mailfleet.db-shm"] == modes["mailfleet.db"] == 0o600
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


# -- the secrets key outside the instance ------------------------------------------------
def test_the_secrets_key_file_may_live_outside_the_instance(database_url, own_instance: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "elsewhere" / "mailfleet-secrets.key"
    monkeypatch.setenv("MAILFLEET_SECRETS_KEY_FILE", str(key_file))
    panel_app = make_app(database_url)
    daemon_app = make_app(database_url)  # the daemon builds its app the same way
    with panel_app.app_context():
        sealed = secret_box.seal("tsig secret")
    assert key_file.exists() and _mode(key_file) == 0o600
    assert not (own_instance / secret_box.KEY_FILE).exists()
    with daemon_app.app_context():
        assert secret_box.unseal(sealed) == "tsig secret"
    assert Fernet(key_file.read_bytes().split()[0]).decrypt(sealed.encode()) == b"tsig secret"
    for app in (panel_app, daemon_app):
        with app.app_context():
            db.engine.dispose()


# -- rotating the secrets key -------------------------------------------------------------
@pytest.fixture
def app_config(tmp_path: Path) -> dict:
    return {"SECRETS_KEY_FILE": str(tmp_path / "keys" / "secrets.key")}


def _seal_some(app, seed, alice) -> dict[str, str]:
    server_id = seed.server(alice)
    with app.app_context():
        domain = Domain(user_id=alice, name="example.com", zone="example.com", dns_host="192.0.2.53",
                        tsig_name="k", tsig_secret=secret_box.seal("tsig!"),
                        dkim_selector="s1", dkim_private_key=secret_box.seal("PEM!"))
        db.session.add(domain)
        db.session.commit()
        return {"server": server_id, "domain": domain.id}


def _sealed_values(app, ids) -> list[str]:
    with app.app_context():
        domain = db.session.get(Domain, ids["domain"])
        return [domain.tsig_secret, domain.dkim_private_key, db.session.get(Server, ids["server"]).agent_key]


def test_secrets_rotate_reseals_everything_and_drops_the_old_key(app, seed, alice, runner, tmp_path) -> None:
    ids = _seal_some(app, seed, alice)
    key_file = Path(app.config["SECRETS_KEY_FILE"])
    old_key = key_file.read_bytes().strip()
    before = _sealed_values(app, ids)
    result = runner.invoke(args=["secrets", "rotate"])
    assert result.exit_code == 0, result.output
    assert "3 secrets re-sealed" in result.output
    keys = key_file.read_bytes().split()
    assert len(keys) == 1 and keys[0] != old_key and _mode(key_file) == 0o600
    after = _sealed_values(app, ids)
    assert all(a != b for a, b in zip(after, before))
    for value in after:
        with pytest.raises(InvalidToken):
            Fernet(old_key).decrypt(value.encode())
    with app.app_context():
        assert [secret_box.unseal(v) for v in after[:2]] == ["tsig!", "PEM!"]
        assert agent_keys.open_agent_key(db.session.get(Server, ids["server"])) == FERNET_KEY


def test_secrets_rotate_in_two_steps_keeps_both_keys_until_finish(app, seed, alice, runner) -> None:
    ids = _seal_some(app, seed, alice)
    key_file = Path(app.config["SECRETS_KEY_FILE"])
    old_key = key_file.read_bytes().strip()
    assert runner.invoke(args=["secrets", "rotate", "--keep-old"]).exit_code == 0
    keys = key_file.read_bytes().split()
    assert len(keys) == 2 and keys[1] == old_key  # newest first; the old one still opens
    with app.app_context():
        # something sealed under the old key meanwhile (a process that had not seen the new key yet)
        db.session.get(Domain, ids["domain"]).tsig_secret = Fernet(old_key).encrypt(b"late").decode()
        db.session.commit()
        assert secret_box.unseal(db.session.get(Domain, ids["domain"]).tsig_secret) == "late"
    result = runner.invoke(args=["secrets", "rotate", "--finish"])
    assert result.exit_code == 0, result.output
    assert key_file.read_bytes().split() == [keys[0]]
    for value in _sealed_values(app, ids):
        Fernet(keys[0]).decrypt(value.encode())  # every secret opens with the new key alone


def test_secrets_rotate_refuses_a_key_given_in_the_environment(app, runner) -> None:
    app.config["SECRETS_KEY"] = Fernet.generate_key().decode()
    result = runner.invoke(args=["secrets", "rotate"])
    assert result.exit_code == 1
    assert "SECRETS_KEY" in result.output and "Traceback" not in result.output
