"""`flask --app panel …` commands: users and API tokens, list imports, servers, the database.

Each command prints what a script needs on stdout (a token, a report, an id) and its
errors on stderr as one plain sentence, with exit status 1; never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from .extensions import db
from .models import User
from .models.base import is_row_id, utcnow
from .services import audit
from .services.csv_import import ImportFailed, ImportOptions, import_file
from .services.imports.mx import MxChecker
from .services.imports.report import csv_rows
from .services.imports.sources import ImportLimits
from .services.lists import ListError, create_list, find_list
from .services.servers import ServerError, parse_source_ip, register_server
from .services.users import (UserError, create_api_token, create_user, find_user, generate_password, get_api_token,
                             revoke_api_token, user_tokens)

class PanelGroup(AppGroup):
    """Commands whose database errors end in one plain sentence instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with audit.acting_from_cli():
                return super().invoke(ctx)
        except SQLAlchemyError as exc:  # the app context (and its session) is gone by now
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise click.ClickException(
                f"the database refused: {reason} (is it up to date? run `flask --app panel init-db`)"
            ) from None


users_cli = PanelGroup("users", help="Create users and API tokens.")
lists_cli = PanelGroup("lists", help="Import recipients into lists and export lists.")
CLI_REJECTED_SHOWN = 1000  # rejected rows printed in the JSON report; --report gets them all
servers_cli = PanelGroup("servers", help="Register sending servers.")
suppressions_cli = PanelGroup("suppressions", help="Export a user's suppression list.")
tokens_cli = PanelGroup("tokens", help="Create, list and revoke API tokens.")


def fail(message: str) -> NoReturn:
    """Roll back, print the reason and exit 1."""
    db.session.rollback()
    raise click.ClickException(message)


def _user(email: str) -> User:
    user = find_user(email)
    if user is None:
        fail(f"there is no user {email}: create it with `flask --app panel users create {email}`")
    return user


@users_cli.command("create")
@click.argument("email")
@click.option("--password", help="The password; without it one is generated and printed.")
@click.option("--admin", is_flag=True, help="An admin: manages users, quotas, shared servers, the audit log.")
def users_create(email: str, password: str | None, admin: bool) -> None:
    """Create a user who can log in to the panel. Prints the generated password, if any."""
    generated = password is None
    if password is None:
        password = generate_password()
    try:
        user = create_user(email, password, is_admin=admin)
    except UserError as exc:
        fail(str(exc))
    db.session.commit()
    if generated:
        click.echo(f"Created user {user.email}; the password below is shown only now.", err=True)
        click.echo(password)
    else:
        click.echo(f"Created user {user.email}.", err=True)


@users_cli.command("create-token")
@click.argument("email")
@click.option("--name", default="cli", show_default=True, help="A name to tell the token apart by.")
def users_create_token(email: str, name: str) -> None:
    """Create an API token for a user. Prints only the token (it is not stored and cannot be shown again)."""
    user = _user(email)
    try:
        token = create_api_token(user, name)
    except UserError as exc:
        fail(str(exc))
    db.session.commit()
    click.echo(token)


@tokens_cli.command("create")
@click.argument("email")
@click.option("--name", required=True, help="A name to tell the token apart by.")
@click.option("--expires-days", type=click.IntRange(1, 3650), help="Days until it stops working; without: never.")
@click.option("--read-only", is_flag=True, help="It may only GET and HEAD; anything else is a 403.")
def tokens_create(email: str, name: str, expires_days: int | None, read_only: bool) -> None:
    """Create an API token for a user. Prints only the token (it is not stored and cannot be shown again)."""
    user = _user(email)
    try:
        token = create_api_token(user, name, scope="read" if read_only else "write",
                                 expires_in=timedelta(days=expires_days) if expires_days else None)
    except UserError as exc:
        fail(str(exc))
    db.session.commit()
    click.echo(token)


def _when(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


@tokens_cli.command("list")
@click.argument("email")
def tokens_list(email: str) -> None:
    """A user's API tokens, one JSON object a line: {"id", "name", "scope", "state" (active, expired,
    revoked), "created_at", "last_used_at", "expires_at", "revoked_at"}; never the tokens themselves."""
    now = utcnow()
    for item in user_tokens(_user(email)):
        click.echo(json.dumps({
            "id": item.id, "name": item.name, "scope": item.scope, "state": item.state(now),
            "created_at": _when(item.created_at), "last_used_at": _when(item.last_used_at),
            "expires_at": _when(item.expires_at), "revoked_at": _when(item.revoked_at)}, ensure_ascii=False))


@tokens_cli.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id: int) -> None:
    """Revoke the API token with this id (`tokens list EMAIL` shows them): refused from now on."""
    api_token = get_api_token(token_id) if is_row_id(token_id) else None
    if api_token is None:
        fail(f"there is no API token {token_id}: `flask --app panel tokens list EMAIL` shows a user's tokens")
    if revoke_api_token(api_token):
        db.session.commit()
        click.echo(f"Revoked token {api_token.id} ({api_token.name!r}) of {api_token.user.email}.", err=True)
    else:
        click.echo(f"Token {api_token.id} ({api_token.name!r}) was already revoked at {_when(api_token.revoked_at)}.",
                   err=True)


@lists_cli.command("import")
@click.argument("list_id_or_name")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=str))
@click.option("--user", "email", required=True, help="The e-mail of the user who owns the list.")
@click.option("--check-mx", is_flag=True, help="Reject addresses whose domain has no MX (or A) record; one lookup a domain.")
@click.option("--all-or-nothing", is_flag=True, help="Import nothing if any row is rejected.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write every rejected row to this CSV file (file, line, email, reason).")
def lists_import(list_id_or_name: str, file: str, email: str, check_mx: bool, all_or_nothing: bool,
                 report_path: Path | None) -> None:
    """Import FILE (`-` for stdin) into a list, by id or name (a new name creates the list).

    FILE is a CSV file with a header row, a text file with one address a line, or a ZIP or
    RAR archive of such files; the encoding and delimiter are found out. Prints the report as
    JSON: {"added", "duplicates", "rejected": [{"row", "email", "reason", "file"?}] (the first
    1,000), "rejected_count"}. Nothing is imported when the file as a whole is unusable.
    """
    user = _user(email)
    mailing_list = find_list(user, list_id_or_name)
    if mailing_list is None:
        if list_id_or_name.isdigit():
            fail(f"{email} has no list {list_id_or_name}")
        try:
            mailing_list = create_list(user, list_id_or_name)
        except ListError as exc:
            fail(str(exc))
        click.echo(f"Created list {mailing_list.name!r} (id {mailing_list.id}).", err=True)
    config = current_app.config
    options = ImportOptions(check_mx=MxChecker.from_config(config) if check_mx else None,
                            all_or_nothing=all_or_nothing, limits=ImportLimits.from_config(config),
                            keep_rejected=CLI_REJECTED_SHOWN)
    with contextlib.ExitStack() as stack:
        if report_path is not None:
            try:
                report_file = stack.enter_context(open(report_path, "w", encoding="utf-8", newline=""))
            except OSError as exc:
                fail(f"cannot write the report {report_path}: {exc.strerror}")
            spool = stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8"))
            options.on_reject = lambda item: spool.write(json.dumps(item, ensure_ascii=False) + "\n")
        try:
            path = Path(file)
            if file == "-":
                path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "stdin"
                with open(path, "wb") as copy:
                    shutil.copyfileobj(sys.stdin.buffer, copy)
            report = import_file(mailing_list, path, "stdin" if file == "-" else path.name, options)
            failure = None
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}")
        except ImportFailed as exc:
            failure = str(exc)
        if report_path is not None:
            spool.seek(0)
            report_file.writelines(csv_rows((json.loads(line) for line in spool), path.name))
        if failure is not None:
            fail(f"nothing was imported: {failure}")
    db.session.commit()
    click.echo(json.dumps({**report.as_dict(), "rejected_count": report.rejected_count}, ensure_ascii=False))
    click.echo(
        f"{report.added} added, {report.duplicates} already on the list, {report.rejected_count} rejected; "
        f"the list {mailing_list.name!r} now has {mailing_list.recipient_count}.",
        err=True,
    )


def _write_csv(file: str, chunks) -> None:
    """Stream CSV text to FILE (`-` for stdout) a piece at a time."""
    try:
        with contextlib.ExitStack() as stack:
            out = sys.stdout if file == "-" else stack.enter_context(open(file, "w", encoding="utf-8", newline=""))
            for chunk in chunks:
                out.write(chunk)
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror}")


@lists_cli.command("export")
@click.argument("list_id_or_name")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=str))
@click.option("--user", "email", required=True, help="The e-mail of the user who owns the list.")
def lists_export(list_id_or_name: str, file: str, email: str) -> None:
    """Write the list as CSV (email, then its fields; safe to open in a spreadsheet) to FILE (`-`: stdout)."""
    from .services.recipients import export_list

    mailing_list = find_list(_user(email), list_id_or_name)
    if mailing_list is None:
        fail(f"{email} has no list {list_id_or_name!r}")
    _write_csv(file, export_list(mailing_list))
    click.echo(f"Exported {mailing_list.recipient_count} recipients of {mailing_list.name!r}.", err=True)


@suppressions_cli.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=str))
@click.option("--user", "email", required=True, help="The e-mail of the user whose list it is.")
def suppressions_export(file: str, email: str) -> None:
    """Write the user's suppression list as CSV (email, reason, created_at) to FILE (`-`: stdout)."""
    from .services.suppressions import export_suppressions

    _write_csv(file, export_suppressions(_user(email)))


@servers_cli.command("add")
@click.option("--user", "email", required=True, help="The e-mail of the user who owns the server.")
@click.option("--name", required=True, help="A name to show in the panel.")
@click.option("--host", required=True, help="Host name or IP address of the worker agent.")
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True, help="The agent's HTTPS port.")
@click.option("--key-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File holding the agent's Fernet key.")
@click.option("--fingerprint", required=True, help="SHA-256 of the agent's TLS certificate (hex, colons allowed).")
@click.option("--ip", "ips", multiple=True, required=True, metavar="IP[=HELO]",
              help="A source IP the server sends from, and the name it greets with (default: the host). Repeatable.")
def servers_add(email: str, name: str, host: str, port: int, key_file: Path, fingerprint: str,
                ips: tuple[str, ...]) -> None:
    """Register a worker whose agent is already running. Prints the new server's id."""
    user = _user(email)
    try:
        key = key_file.read_text().strip()
    except OSError as exc:
        fail(f"cannot read the key file {key_file}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"{key_file} does not hold a Fernet key (it is not text)")
    try:
        source_ips = [parse_source_ip(spec) for spec in ips]
        server = register_server(
            user, name=name, host=host, port=port, agent_key=key, fingerprint=fingerprint, ips=source_ips
        )
    except ServerError as exc:
        fail(str(exc))
    db.session.commit()
    click.echo(f"Registered server {server.name!r} with {len(server.ips)} source IP(s); id {server.id}", err=True)
    click.echo(server.id)


@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create or upgrade the database to the newest schema (Alembic migrations)."""
    from flask_migrate import upgrade

    upgrade()
    click.echo("The database is up to date.", err=True)


bounces_cli = PanelGroup("bounces", help="Read returned messages.")


@bounces_cli.command("classify")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=str))
def bounces_classify(file: str) -> None:
    """Classify a returned message FILE (`-` for stdin): one JSON object a failed recipient,
    {"recipient", "reason", "kind": "hard"|"soft", "dsn"?, "code"?, …}, or for a message that
    reports no failure {"recipient": null, "reason", "kind": "none"}."""
    from .services.bounces import NotAMessage, classify, read_message

    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    try:
        verdicts = classify(read_message(raw))
    except NotAMessage as exc:
        fail(f"{file} is not an e-mail message: {exc}")
    for verdict in verdicts:
        click.echo(json.dumps(verdict.as_json(), ensure_ascii=False))


def register_commands(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(lists_cli)
    app.cli.add_command(servers_cli)
    app.cli.add_command(suppressions_cli)
    app.cli.add_command(bounces_cli)
    app.cli.add_command(init_db)
    from .cli_secrets import secrets_cli  # imports this module's PanelGroup

    app.cli.add_command(secrets_cli)
