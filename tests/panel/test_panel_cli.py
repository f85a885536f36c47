"""`flask --app panel …` commands, run through the `runner` fixture."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import inspect, select

from panel.extensions import db
from panel.models import ApiToken, MailingList, Recipient, Server
from panel.services.agent_keys import open_agent_key
from panel.services.users import authenticate, user_for_token


def test_users_create_with_a_password(runner, app, seed):
    result = runner.invoke(args=["users", "create", "Admin@Example.com", "--password", "long enough pw"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # nothing a script would mistake for a password
    with app.app_context():
        assert authenticate("admin@example.com", "long enough pw") is not None


def test_users_create_generates_and_prints_a_password(runner, app):
    result = runner.invoke(args=["users", "create", "admin@mailfleet.test"])
    assert result.exit_code == 0, result.output
    password = result.stdout.strip()
    assert len(password) >= 12 and "\n" not in password
    assert "shown only now" in result.stderr
    with app.app_context():
        assert authenticate("admin@mailfleet.test", password) is not None


@pytest.mark.parametrize("args,message", [
    (["users", "create", "not-an-email", "--password", "long enough pw"], "not a usable e-mail address"),
    (["users", "create", "alice@example.com", "--password", "long enough pw"], "already exists"),
    (["users", "create", "new@example.com", "--password", "short"], "at least 8 characters"),
    (["users", "create-token", "nobody@example.com"], "there is no user nobody@example.com"),
])
def test_users_errors(runner, alice, args, message):
    result = runner.invoke(args=args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_create_token_prints_only_the_token_and_stores_its_hash(runner, app, seed, alice):
    result = runner.invoke(args=["users", "create-token", "alice@example.com", "--name", "deploy"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    row = seed.query(lambda s: s.scalars(select(ApiToken)).one())
    assert row.name == "deploy" and row.user_id == alice
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in row.token_hash
    with app.app_context():
        assert user_for_token(token).id == alice
        assert user_for_token(token + "x") is None


def test_lists_import_by_name_creates_the_list(runner, seed, alice, tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("email,name\nann@example.org,Ann\nbad,B\nANN@example.org,Ann\n", encoding="utf-8")
    result = runner.invoke(args=["lists", "import", "Newsletter", str(path), "--user", "alice@example.com"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] == 1 and report["duplicates"] == 1
    assert report["rejected"] == [{"row": 3, "email": "bad", "reason": "an address needs a part before and after an @-sign"}]
    assert "1 added, 1 already on the list, 1 rejected" in result.stderr
    mailing_list = seed.query(lambda s: s.scalars(select(MailingList)).one())
    assert (mailing_list.name, mailing_list.user_id, mailing_list.recipient_count) == ("Newsletter", alice, 1)


def test_lists_import_by_id(runner, seed, alice, tmp_path):
    list_id = seed.list(alice, "Existing")
    path = tmp_path / "people.csv"
    path.write_bytes(b"\xef\xbb\xbfmail\nzed@example.org\n")
    result = runner.invoke(args=["lists", "import", str(list_id), str(path), "--user", "alice@example.com"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 1
    assert seed.query(lambda s: s.scalars(select(Recipient.email)).all()) == ["zed@example.org"]


@pytest.mark.parametrize("content,list_arg,message", [
    ("name\nAnn\n", "People", "nothing was imported: the first row must name the columns"),
    ("email,email\na@example.org,b@example.org\n", "People", "more than one email column"),
    ("email\na@example.org\n", "42", "alice@example.com has no list 42"),
    (None, "People", "cannot read"),
])
def test_lists_import_errors_import_nothing(runner, seed, alice, bob, tmp_path, content, list_arg, message):
    seed.list(bob, "42")  # a list of someone else is not found by its name or id
    path = tmp_path / "people.csv"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = runner.invoke(args=["lists", "import", list_arg, str(path), "--user", "alice@example.com"])
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert seed.query(lambda s: s.query(Recipient).count()) == 0
    assert seed.query(lambda s: s.query(MailingList).filter_by(user_id=alice).count()) == 0


def test_servers_add(app, runner, seed, alice, tmp_path):
    app.config["ALLOWED_HOST_NETWORKS"] = "127.0.0.0/8"  # an agent on loopback, allowed as the local stack does
    key = Fernet.generate_key()
    key_file = tmp_path / "agent.key"
    key_file.write_bytes(key + b"\n")
    fingerprint = ":".join(["AB"] * 32)
    result = runner.invoke(args=[
        "servers", "add", "--user", "alice@example.com", "--name", "local worker", "--host", "127.0.0.1",
        "--port", "8443", "--key-file", str(key_file), "--fingerprint", fingerprint,
        "--ip", "127.0.0.2=ip2.worker.test", "--ip", "127.0.0.3=IP3.worker.test",
    ])
    assert result.exit_code == 0, result.output
    server_id = int(result.stdout.split()[-1])
    server = seed.get(Server, server_id)
    assert (server.user_id, server.name, server.host, server.api_port) == (alice, "local worker", "127.0.0.1", 8443)
    assert key.decode() not in server.agent_key and server.cert_fingerprint == "ab" * 32  # stored sealed
    with app.app_context():
        assert open_agent_key(server) == key.decode()
    assert server.status == "new"
    ips = seed.query(lambda s: [(i.ip, i.helo, i.weight, i.active) for i in s.get(Server, server_id).ips])
    assert ips == [("127.0.0.2", "ip2.worker.test", 1, True), ("127.0.0.3", "ip3.worker.test", 1, True)]


@pytest.mark.parametrize("change,message", [
    ({"--key-file": "missing"}, "cannot read the key file"),
    ({"key": b"not a fernet key"}, "not a Fernet key"),
    ({"--fingerprint": "abc"}, "64 hex digits"),
    ({"--ip": "300.1.1.1"}, "is not an IP address"),
    ({"--ip": "10.0.0.1=bad helo"}, "not a host name"),
    ({"--host": "bad host!"}, "neither an IP address nor a host name"),
    ({"--user": "nobody@example.com"}, "there is no user"),
])
def test_servers_add_errors(runner, seed, alice, tmp_path, change, message):
    key_file = tmp_path / "agent.key"
    key_file.write_bytes(change.get("key", Fernet.generate_key()))
    options = {"--user": "alice@example.com", "--name": "w", "--host": "worker.example.net",
               "--key-file": str(key_file), "--fingerprint": "ab" * 32, "--ip": "192.0.2.1"}
    options.update({k: v for k, v in change.items() if k.startswith("--")})
    if options["--key-file"] == "missing":
        options["--key-file"] = str(tmp_path / "missing.key")
    args = ["servers", "add"] + [item for pair in options.items() for item in pair]
    result = runner.invoke(args=args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert seed.query(lambda s: s.query(Server).count()) == 0


def test_servers_add_helo_defaults_to_the_host(runner, seed, alice, tmp_path):
    key_file = tmp_path / "agent.key"
    key_file.write_bytes(Fernet.generate_key())
    result = runner.invoke(args=["servers", "add", "--user", "alice@example.com", "--name", "w", "--host",
                                 "Worker.Example.net", "--key-file", str(key_file), "--fingerprint", "cd" * 32,
                                 "--ip", "192.0.2.1"])
    assert result.exit_code == 0, result.output
    assert seed.query(lambda s: [(i.ip, i.helo) for i in s.scalars(select(Server)).one().ips]) == [
        ("192.0.2.1", "worker.example.net")
    ]


def test_init_db_upgrades_a_fresh_database(empty_app, migrating):
    with empty_app.app_context():
        assert inspect(db.engine).get_table_names() == []
    with migrating():
        result = empty_app.test_cli_runner().invoke(args=["init-db"])
        assert result.exit_code == 0, result.output
        again = empty_app.test_cli_runner().invoke(args=["init-db"])  # idempotent
        assert again.exit_code == 0, again.output
    with empty_app.app_context():
        tables = set(inspect(db.engine).get_table_names())
    assert {"users", "lists", "recipients", "campaigns", "deliveries", "alembic_version"} <= tables


def test_a_user_made_on_the_cli_can_log_in(runner, browser):
    runner.invoke(args=["users", "create", "ops@example.com", "--password", "long enough pw"])
    response = browser.post("/login", {"email": "ops@example.com", "password": "long enough pw"})
    assert response.status_code == 302
    assert browser.get("/lists/").status_code == 200


MISSING_TABLE = {"sqlite": "no such table: users", "postgresql": 'relation "users" does not exist'}


def test_a_database_without_tables_gives_a_plain_error(empty_app, db_backend):
    result = empty_app.test_cli_runner().invoke(args=["users", "create", "a@example.com", "--password", "long enough"])
    assert result.exit_code == 1
    assert f"the database refused: {MISSING_TABLE[db_backend]}" in result.stderr
    assert "init-db" in result.stderr and "Traceback" not in result.output


# -- tokens ---------------------------------------------------------------------------------------

def test_tokens_create_list_and_revoke(runner, app, client, seed, alice):
    result = runner.invoke(args=["tokens", "create", "alice@example.com", "--name", "reports",
                                 "--expires-days", "7", "--read-only"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.startswith("mf_")
    row = seed.query(lambda s: s.scalars(select(ApiToken)).one())
    assert (row.name, row.scope) == ("reports", "read") and 6 <= (row.expires_at - row.created_at).days <= 7
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/lists", headers=headers).status_code == 200
    assert client.post("/api/v1/lists", headers=headers, json={"name": "x"}).status_code == 403

    result = runner.invoke(args=["tokens", "list", "alice@example.com"])
    assert result.exit_code == 0, result.output
    [listed] = [json.loads(line) for line in result.stdout.splitlines()]
    assert listed["id"] == row.id and listed["name"] == "reports" and listed["scope"] == "read"
    assert listed["state"] == "active" and listed["revoked_at"] is None and listed["expires_at"]
    assert token not in result.stdout and row.token_hash not in result.stdout

    result = runner.invoke(args=["tokens", "revoke", str(row.id)])
    assert result.exit_code == 0, result.output
    assert "Revoked" in result.stderr
    response = client.get("/api/v1/lists", headers=headers)
    assert response.status_code == 401 and "revoked" in response.get_json()["error"]
    listed = json.loads(runner.invoke(args=["tokens", "list", "alice@example.com"]).stdout)
    assert listed["state"] == "revoked" and listed["revoked_at"]
    again = runner.invoke(args=["tokens", "revoke", str(row.id)])
    assert again.exit_code == 0 and "already revoked" in again.stderr


def test_tokens_create_defaults_to_a_write_token_without_expiry(runner, seed, alice):
    result = runner.invoke(args=["tokens", "create", "alice@example.com", "--name", "deploy"])
    assert result.exit_code == 0, result.output
    row = seed.query(lambda s: s.scalars(select(ApiToken)).one())
    assert (row.scope, row.expires_at, row.revoked_at) == ("write", None, None)


@pytest.mark.parametrize("args,message", [
    (["tokens", "create", "nobody@example.com", "--name", "x"], "there is no user nobody@example.com"),
    (["tokens", "create", "alice@example.com", "--name", "x", "--expires-days", "0"], "--expires-days"),
    (["tokens", "list", "nobody@example.com"], "there is no user"),
    (["tokens", "revoke", "999"], "there is no API token 999"),
    (["tokens", "revoke", "abc"], "is not a valid integer"),
])
def test_tokens_errors(runner, alice, args, message):
    result = runner.invoke(args=args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.output
