"""Rotating keys: `flask --app panel secrets rotate` (a new secrets key, every sealed secret
re-sealed under it) and `flask --app panel servers rotate-key` (a new agent key for a server)."""

from __future__ import annotations

import click

from .cli import PanelGroup, fail, servers_cli
from .extensions import db
from .models import Server
from .services.agent_keys import request_rotation
from .services.secret_box import SecretBoxError
from .services.secret_rotation import RotationError, add_new_key, drop_old_keys, reseal_all

secrets_cli = PanelGroup("secrets", help="Rotate the key that seals stored secrets (TSIG, DKIM, agent keys).")


@secrets_cli.command("rotate")
@click.option("--keep-old", is_flag=True,
              help="Keep the old keys in the file (for processes that may still seal with them); "
                   "drop them later with --finish.")
@click.option("--finish", is_flag=True, help="Re-seal what an old key still seals, then drop the old keys.")
def rotate(keep_old: bool, finish: bool) -> None:
    """Add a new key, re-seal every secret under it and drop the old key; the panel and the
    daemon keep running (they open secrets with every key in the file)."""
    try:
        if not finish:
            count = add_new_key()
            resealed = reseal_all()
            db.session.commit()
            click.echo(f"New secrets key added ({count} keys in the file); {resealed} secrets re-sealed.")
            if keep_old:
                click.echo("The old keys stay until `flask --app panel secrets rotate --finish`.")
                return
        resealed = reseal_all(only_stale=True)
        db.session.commit()
        drop_old_keys()
    except (RotationError, SecretBoxError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the secrets key file: {exc.strerror} ({exc.filename})")
    click.echo(f"Old keys dropped ({resealed} more secrets re-sealed first); only the newest key opens the secrets now.")


@servers_cli.command("rotate-key")
@click.argument("server_id", type=int)
def rotate_agent_key(server_id: int) -> None:
    """Replace a server's agent key without downtime: the daemon hands the agent a new key at its
    next round, sealed with the current one, then uses only the new key."""
    server = db.session.get(Server, server_id)
    if server is None:
        fail(f"there is no server {server_id} (`GET /api/v1/servers` lists them)")
    if not server.ready:
        fail(f"server {server_id} has no agent to talk to (status {server.status}): set it up first")
    if not request_rotation(server):
        click.echo(f"A new key for server {server_id} already waits for the daemon's next round.")
        return
    db.session.commit()
    click.echo(f"The daemon hands server {server_id} a new agent key at its next round; "
               "its page says \"agent key replaced\" once the agent took it.")
