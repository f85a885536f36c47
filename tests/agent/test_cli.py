"""`python -m worker_agent` as a user runs it: init, render, config errors."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization

from worker_agent.config import ConfigError, load_config

from .conftest import make_campaign, make_recipient

REPO = Path(__file__).resolve().parents[2]


def agent(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker_agent", *args], cwd=REPO, capture_output=True,
                          env={**os.environ, **(env or {})}, input=stdin, timeout=60)


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_init_creates_key_and_certificate_once(tmp_path: Path) -> None:
    config = write_json(tmp_path / "agent.json", {"data_dir": "data", "listen": "127.0.0.1:8443", "hostname": "w1.test"})
    first = agent("init", "--config", str(config))
    assert first.returncode == 0, first.stderr
    lines = first.stdout.decode().splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    key_file, cert_file = Path(info["key_file"]), Path(info["cert_file"])
    assert key_file == tmp_path / "data" / "agent.key"  # relative paths are relative to the config file
    Fernet(key_file.read_bytes().strip())  # a usable Fernet key
    for path in (key_file, cert_file, tmp_path / "data" / "agent-cert-key.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert info["fingerprint"] == hashlib.sha256(der).hexdigest()
    assert info["fingerprint"] == info["fingerprint"].lower() and ":" not in info["fingerprint"]
    assert "w1.test" in cert.subject.rfc4514_string()

    before = (key_file.read_bytes(), cert_file.read_bytes())
    again = agent("init", env={"MAILFLEET_AGENT_CONFIG": str(config)})  # the config may come from the environment
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == info
    assert (key_file.read_bytes(), cert_file.read_bytes()) == before


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ("[]", "JSON object"),
    ("{}", "data_dir"),
    ('{"data_dir": "d", "smtp_port": "25"}', "smtp_port"),
    ('{"data_dir": "d", "source_ips": ["not-an-ip"]}', "not-an-ip"),
    ('{"data_dir": "d", "rate_limits": [{"domain": "x.org", "per_minute": 0}]}', "per_minute"),
    ('{"data_dir": "d", "colour": "blue"}', "unknown config key"),
])
def test_a_bad_config_is_one_clear_line(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "agent.json"
    if content is not None:
        path.write_text(content)
    result = agent("init", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == b""
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err and "Traceback" not in err


def test_no_config_at_all(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MAILFLEET_AGENT_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "worker_agent", "sender"], cwd=REPO, capture_output=True, env=env)
    assert result.returncode == 2 and b"--config" in result.stderr


def test_config_defaults_and_rate_rules(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", {
        "data_dir": str(tmp_path / "d"),
        "rate_limits": [{"domain": "gmail.com", "per_minute": 60},
                        {"source_ip": "127.0.0.2", "domain": "gmail.com", "per_minute": 30},
                        {"source_ip": "127.0.0.2", "per_minute": 600}],
    })
    config = load_config(path)
    assert (config.smtp_host, config.smtp_port, config.smtp_connections) == ("127.0.0.1", 25, 4)
    assert config.listen == "127.0.0.1:8443"
    assert config.bounce_spool == tmp_path / "d" / "bounces"
    assert config.rate_for("127.0.0.2", "gmail.com") == 30
    assert config.rate_for("127.0.0.3", "gmail.com") == 60
    assert config.rate_for("127.0.0.2", "yahoo.com") == 600
    assert config.rate_for("127.0.0.3", "yahoo.com") is None
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.json")


def test_render_prints_the_exact_letter(tmp_path: Path) -> None:
    campaign = write_json(tmp_path / "c.json", make_campaign())
    recipient = write_json(tmp_path / "r.json", make_recipient(9001))
    result = agent("render", str(campaign), str(recipient))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"From: Example News <news@example.com>\r\n")
    assert b"Subject: News for Ann 9001\r\n" in result.stdout
    assert b"X-Mailfleet-Source-IP: 127.0.0.2\r\n" in result.stdout
    assert result.stdout.endswith(b"--\r\n")


def test_render_example_is_a_pair_that_renders(tmp_path: Path) -> None:
    example = agent("render", "--example")
    assert example.returncode == 0
    pair = json.loads(example.stdout)
    assert set(pair) == {"campaign", "recipient"}
    campaign = write_json(tmp_path / "c.json", pair["campaign"])
    recipient = write_json(tmp_path / "r.json", pair["recipient"])
    result = agent("render", str(campaign), str(recipient))
    assert result.returncode == 0 and b"Subject: News for Ann" in result.stdout
    whole = write_json(tmp_path / "pair.json", pair)  # the example file itself works for both arguments
    from_pair = agent("render", str(whole), str(whole)).stdout
    assert from_pair.split(b"Date:")[0] == result.stdout.split(b"Date:")[0]
    assert from_pair.split(b"MIME-Version")[1].split(b"boundary=")[0] == result.stdout.split(b"MIME-Version")[1].split(b"boundary=")[0]


@pytest.mark.parametrize("campaign, recipient, message", [
    ("{oops", make_recipient(), "not valid JSON"),
    (make_campaign(subject=None), make_recipient(), "campaign.subject is missing"),
    (make_campaign(), {"id": 1, "email": "a@b.org"}, "recipient.source_ip is missing"),
    (make_campaign(text="{{ 1 // 0 }}"), make_recipient(), "ZeroDivisionError"),
])
def test_render_refuses_bad_input_with_one_line(tmp_path: Path, campaign: object, recipient: object, message: str) -> None:
    c = tmp_path / "c.json"
    c.write_text(campaign if isinstance(campaign, str) else json.dumps(campaign))
    r = write_json(tmp_path / "r.json", recipient)
    result = agent("render", str(c), str(r))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert result.stdout == b""


def test_render_of_a_missing_file(tmp_path: Path) -> None:
    result = agent("render", str(tmp_path / "nope.json"), str(tmp_path / "nope2.json"))
    assert result.returncode == 2 and b"cannot read campaign file" in result.stderr
