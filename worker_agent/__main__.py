"""`python -m worker_agent init | render | serve | sender | bounce-intake`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .config import ENV_VAR, ConfigError, load_config

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker_agent", description="Mailfleet worker agent")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create the data dir, Fernet key and TLS cert; print the cert fingerprint")
    p.add_argument("--config", help=f"agent config JSON (default: ${ENV_VAR})")

    p = sub.add_parser("render", help="print a letter exactly as it would be submitted to Exim")
    p.add_argument("campaign", nargs="?", help="campaign JSON file (the \"campaign\" object of a batch)")
    p.add_argument("recipient", nargs="?", help="recipient JSON file (one item of a batch's \"recipients\")")
    p.add_argument("--example", action="store_true",
                   help="print a sample {\"campaign\": …, \"recipient\": …} object to start from")

    p = sub.add_parser("serve", help="run the HTTPS API under gunicorn with the config's TLS cert")
    p.add_argument("--config", help=f"agent config JSON (default: ${ENV_VAR})")

    p = sub.add_parser("sender", help="run the sender (claims, renders, submits; follows Exim's log)")
    p.add_argument("--config", help=f"agent config JSON (default: ${ENV_VAR})")

    p = sub.add_parser("bounce-intake", help="what Exim's pipe runs: store the message on stdin in SPOOL")
    p.add_argument("spool")

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _init(args: argparse.Namespace) -> int:
    from .setup_node import init_node

    print(json.dumps(init_node(load_config(args.config))))
    return 0


def _render(args: argparse.Namespace) -> int:
    from .render import CampaignError, Renderer, RenderError, check_recipient, example_pair

    if args.example:
        print(json.dumps(example_pair(), indent=2))
        return 0
    if not args.campaign or not args.recipient:
        print("error: give CAMPAIGN.json and RECIPIENT.json (or --example for a sample pair)", file=sys.stderr)
        return EXIT_USAGE
    try:
        campaign, recipient = _read_json(args.campaign, "campaign"), _read_json(args.recipient, "recipient")
        check_recipient(recipient)
        letter = Renderer().render(campaign, recipient)
    except (CampaignError, RenderError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.buffer.write(letter.data)
    sys.stdout.flush()
    return 0


def _read_json(path: str, what: str) -> object:
    """A JSON file; a whole pair from `render --example` is accepted too."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{what} file {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and set(data) == {"campaign", "recipient"}:
        data = data[what]
    return data


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    assert config.path is not None
    for path in (config.key_file, config.cert_file, config.cert_key_file):
        if not path.exists():
            raise ConfigError(f"{path} is missing: run `python -m worker_agent init --config {config.path}` first")
    os.environ[ENV_VAR] = str(config.path)
    command = [
        sys.executable, "-m", "gunicorn",
        "--workers", "1", "--threads", "4",
        "--bind", config.listen,
        "--certfile", str(config.cert_file), "--keyfile", str(config.cert_key_file),
        "--access-logfile", "-", "--error-logfile", "-",
        "--no-control-socket",  # its default path is shared by every gunicorn of the user (the panel's too)
        "worker_agent.api:create_app()",
    ]
    os.execv(sys.executable, command)  # gunicorn takes over this process: signals reach it directly


def _sender(args: argparse.Namespace) -> int:
    from .sender import run_sender

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_sender(load_config(args.config))
    return 0


def _bounce_intake(args: argparse.Namespace) -> int:
    from .bounce_intake import main as intake

    return intake([args.spool])


COMMANDS = {"init": _init, "render": _render, "serve": _serve, "sender": _sender, "bounce-intake": _bounce_intake}

if __name__ == "__main__":
    sys.exit(main())
