"""The Ansible collection (ansible/): lint, syntax, the templates it renders, the preflight checks.

- ansible-lint (production profile) and yamllint pass on the collection;
- every playbook passes `ansible-playbook --syntax-check`;
- every role template renders with the example inventory's variables, and what it renders
  works: Exim accepts its configuration (`exim4 -C FILE -bV`), the agent's own loader its
  config, `systemd-analyze verify` its units;
- the preflight role, run in check mode against this machine (read-only), passes with sane
  limits and stops with its plain-language reason when a limit is made impossible.

Needs the tools of requirements-ansible.txt in this interpreter's venv; without them every
test here is skipped with the command that installs them. No test changes this machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTION_DIR = REPO_ROOT / "ansible"
COLLECTIONS_PATH = COLLECTION_DIR / ".collections"
COLLECTIONS_SCRIPT = REPO_ROOT / "scripts" / "ansible-collections.sh"
VENV_BIN = Path(sys.executable).parent
TOOLS = ("ansible-playbook", "ansible-lint", "yamllint")


def tool(name: str) -> str:
    """Absolute path of a tool in this interpreter's venv; skip the test when it is missing."""
    path = VENV_BIN / name
    if not path.exists():
        pytest.skip(
            f"{name} is not installed in {VENV_BIN}: install the Ansible tooling with "
            f"`{sys.executable} -m pip install -r requirements-ansible.txt`"
        )
    return str(path)


@pytest.fixture(scope="session")
def ansible_env() -> dict[str, str]:
    """Environment for the Ansible tools: the venv first on PATH, the unpacked collections."""
    for name in TOOLS:
        tool(name)
    posix = COLLECTIONS_PATH / "ansible_collections" / "ansible" / "posix"
    if not posix.is_dir():
        result = subprocess.run(
            ["bash", str(COLLECTIONS_SCRIPT)],
            capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHON": sys.executable},
        )
        if result.returncode != 0 or not posix.is_dir():
            pytest.skip(
                f"collections ansible.posix/community.general are not unpacked in {COLLECTIONS_PATH} and "
                f"scripts/ansible-collections.sh failed ({result.returncode}): {result.stderr.strip()[-500:]}"
            )
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        # Ansible's temporary files and ansible-lint's cache stay out of the checkout and $HOME.
        ANSIBLE_HOME=str(COLLECTION_DIR / ".ansible"),
    )
    return env


def run(args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-8000:]}\n--- stderr\n{result.stderr[-4000:]}"


PLAYBOOKS = sorted((COLLECTION_DIR / "playbooks").glob("*.yml"))
EXAMPLE_INVENTORY = COLLECTION_DIR / "inventories" / "example" / "hosts.yml"
HERE = Path(__file__).resolve().parent
EXIM_BIN = Path("/usr/sbin/exim4")
SYSTEMD_ANALYZE = Path("/usr/bin/systemd-analyze")
TEMPLATES = {
    # rendered path (mirrors the target) -> role
    "etc/exim4/exim4.conf": "exim",
    "etc/mailfleet/agent.json": "worker_agent",
    "etc/systemd/system/mailfleet-agent-api.service": "worker_agent",
    "etc/systemd/system/mailfleet-agent-sender.service": "worker_agent",
    "etc/ssh/sshd_config.d/00-mailfleet.conf": "ssh_access",
}


# -- lint and syntax ------------------------------------------------------------------------


def test_ansible_lint_production_profile_passes(ansible_env: dict[str, str]) -> None:
    result = run([tool("ansible-lint"), "--profile", "production", "--nocolor", "ansible/"], ansible_env)
    assert result.returncode == 0, output(result)
    assert "Profile 'production' was required, and it passed" in result.stderr + result.stdout, output(result)


def test_yamllint_passes(ansible_env: dict[str, str]) -> None:
    result = run([tool("yamllint"), "--strict", "--format", "parsable", "ansible/", ".ansible-lint", ".yamllint"], ansible_env)
    assert result.returncode == 0, output(result)


def test_the_playbooks_are_the_four_the_readme_documents() -> None:
    assert [p.name for p in PLAYBOOKS] == ["bootstrap.yml", "decommission.yml", "dns.yml", "reconfigure.yml", "worker.yml"]


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda p: p.name)
def test_playbook_syntax(ansible_env: dict[str, str], playbook: Path) -> None:
    result = run(
        [tool("ansible-playbook"), "-i", str(EXAMPLE_INVENTORY), "--syntax-check", str(playbook)],
        ansible_env, cwd=COLLECTION_DIR,
    )
    assert result.returncode == 0, output(result)


def test_every_template_is_rendered_here_and_starts_with_the_managed_header() -> None:
    found = {
        str(path.relative_to(role_templates)).removesuffix(".j2"): role_templates.parent.name
        for role_templates in (COLLECTION_DIR / "roles").glob("*/templates")
        for path in role_templates.rglob("*.j2")
    }
    assert found == TEMPLATES, "render_templates.yml and TEMPLATES must cover every role template"
    for rendered, role in TEMPLATES.items():
        text = (COLLECTION_DIR / "roles" / role / "templates" / f"{rendered}.j2").read_text(encoding="utf-8")
        if rendered.endswith(".json"):
            continue  # JSON has no comments (the template says so in a Jinja comment)
        assert text.startswith("{{ ansible_managed | comment }}\n"), rendered


# -- the templates, rendered with the example inventory --------------------------------------


@pytest.fixture(scope="module")
def rendered(ansible_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    result = run(
        [
            tool("ansible-playbook"), "-i", "localhost,", str(HERE / "render_templates.yml"),
            "-e", f"out_dir={out}", "-e", f"collection_dir={COLLECTION_DIR}",
        ],
        ansible_env,
    )
    assert result.returncode == 0, output(result)
    return out


def test_exim_accepts_the_rendered_configuration(rendered: Path) -> None:
    if not EXIM_BIN.exists():
        pytest.skip(f"{EXIM_BIN} is not installed (apt-get install exim4-daemon-light)")
    if os.geteuid() != 0:
        pytest.skip("exim4 -C with a config of our own must run as root")
    config = rendered / "etc" / "exim4" / "exim4.conf"
    # Exim accepts a -C config only if root owns it and no one else can write it.
    os.chown(config, 0, 0)
    config.chmod(0o644)
    text = config.read_text(encoding="utf-8")
    assert "MAILFLEET_SOURCE_IPS = <; 192.0.2.10 ; 192.0.2.11\n" in text
    assert "MAILFLEET_HELO_MAP = /var/lib/mailfleet-agent/helo-map\n" in text
    assert ("smtp_192_0_2_11:\n  driver = smtp\n  interface = <; 192.0.2.11\n  helo_data = ${if exists{MAILFLEET_HELO_MAP}"
            "{${lookup{192.0.2.11/MAILFLEET_LETTER_DOMAIN}lsearch{MAILFLEET_HELO_MAP}{$value}"
            "{${lookup{192.0.2.11}lsearch{MAILFLEET_HELO_MAP}{$value}{mx2.example.net}}}}}{mx2.example.net}}\n") in text
    assert "domainlist bounce_domains = <; bounces.example.com\n" in text
    # remote retries are the agent's (exim -M through its limits); the bounce pipe's are Exim's own
    assert "\nbegin retry\n\n*@+bounce_domains * F,10m,2m;" in text and "\n* * F,2d,2d\n" in text
    assert ("command = /usr/bin/python3 /opt/mailfleet-agent/worker_agent/bounce_intake.py "
            "/var/spool/mailfleet/bounces\n") in text
    result = subprocess.run([str(EXIM_BIN), "-C", str(config), "-bV"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, output(result)
    assert f"Configuration file is {config}" in result.stdout, output(result)


def test_the_agent_loads_the_rendered_config(rendered: Path) -> None:
    from worker_agent.config import load_config

    config = load_config(rendered / "etc" / "mailfleet" / "agent.json")
    assert config.source_ips == ("192.0.2.10", "192.0.2.11")
    assert config.bounce_spool == Path("/var/spool/mailfleet/bounces")
    assert config.listen_host_port == ("0.0.0.0", 8443)
    assert config.key_file == Path("/var/lib/mailfleet-agent/agent.key")
    assert config.rate_for("192.0.2.10", "gmail.com") == 600
    assert config.rate_for("192.0.2.10", "example.org") == 3000
    assert config.exim_retries is not None and config.exim_retries.command == ("/usr/sbin/exim4",)


@pytest.mark.parametrize("unit", ["mailfleet-agent-api.service", "mailfleet-agent-sender.service"])
def test_systemd_analyze_verifies_the_rendered_units(rendered: Path, tmp_path: Path, unit: str) -> None:
    if not SYSTEMD_ANALYZE.exists():
        pytest.skip(f"{SYSTEMD_ANALYZE} is not installed (apt-get install systemd)")
    text = (rendered / "etc" / "systemd" / "system" / unit).read_text(encoding="utf-8")
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.startswith("ExecStart=/opt/mailfleet-agent/venv/bin/python -m worker_agent ")
    assert exec_start.endswith(" --config /etc/mailfleet/agent.json")
    # The venv exists only on a worker: verify the unit with an interpreter this machine has.
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/mailfleet-agent/venv/bin/python", "/usr/bin/python3"), encoding="utf-8")
    result = subprocess.run([str(SYSTEMD_ANALYZE), "verify", str(copy)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, output(result)
    assert unit not in result.stderr, output(result)


def test_the_sshd_drop_in_turns_password_logins_off(rendered: Path) -> None:
    lines = (rendered / "etc" / "ssh" / "sshd_config.d" / "00-mailfleet.conf").read_text(encoding="utf-8").splitlines()
    assert "PasswordAuthentication no" in lines
    assert "PermitRootLogin prohibit-password" in lines


# -- the preflight checks, read-only against this machine ------------------------------------


def _preflight(env: dict[str, str], tmp_path: Path, **overrides: object) -> subprocess.CompletedProcess[str]:
    """Run the preflight role in check mode against localhost with these variables."""
    variables: dict[str, object] = {
        # The only check with a side effect (apt-get update) and the one that needs systemd stay off
        # unless a test turns them on; the resolver is tested with a name /etc/hosts answers.
        "preflight_check_package_sources": False,
        "preflight_time_sync_required": False,
        "preflight_resolver_test_name": "localhost",
        "preflight_smtp_port": _free_port(),
        "preflight_source_ips": ["127.0.0.1"],
        **overrides,
    }
    extra = tmp_path / "preflight-vars.json"
    extra.write_text(json.dumps(variables), encoding="utf-8")
    return run(
        [tool("ansible-playbook"), "-i", "localhost,", "--check", str(HERE / "preflight_local.yml"), "-e", f"@{extra}"],
        env,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_preflight_passes_on_a_good_machine(ansible_env: dict[str, str], tmp_path: Path) -> None:
    result = _preflight(ansible_env, tmp_path)
    assert result.returncode == 0, output(result)
    assert "changed=0" in result.stdout, output(result)


@pytest.mark.parametrize(
    ("overrides", "reason", "remedy"),
    [
        ({"preflight_supported_major_versions": ["11"]}, "Unsupported operating system: this server runs Debian",
         "reinstall the server with Debian 12 (bookworm) or Debian 13 (trixie)"),
        ({"preflight_min_memory_mb": 100_000_000}, "Not enough memory: this server has", "give the server more memory"),
        ({"preflight_source_ips": ["127.0.0.1", "198.51.100.77"]},
         "198.51.100.77 is assigned to this worker but not configured on any of its interfaces",
         "add the address to the server's network configuration"),
        ({"preflight_resolver_test_name": "no-such-host.invalid"},
         "No working resolver: this server cannot look up no-such-host.invalid", "put a nameserver that answers"),
        ({"preflight_max_clock_offset_seconds": -1}, "The clock is off: this server's time differs from the controller's",
         "enable time synchronisation"),
    ],
    ids=["os", "memory", "ip", "resolver", "clock"],
)
def test_preflight_stops_with_a_reason_and_a_remedy(
    ansible_env: dict[str, str], tmp_path: Path, overrides: dict[str, object], reason: str, remedy: str
) -> None:
    result = _preflight(ansible_env, tmp_path, **overrides)
    assert result.returncode != 0, output(result)
    text = " ".join(result.stdout.split())
    assert reason in text, output(result)
    assert remedy in text, output(result)


def test_preflight_names_the_program_holding_the_smtp_port(ansible_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _preflight(ansible_env, tmp_path, preflight_smtp_port=port)
    assert result.returncode != 0, output(result)
    text = " ".join(result.stdout.split())
    # ss names the program by its process name: this test's own (python3, or pytest when started as such).
    program = Path("/proc/self/comm").read_text().strip()
    assert f"Port {port} is taken by {program}" in text, output(result)
    assert "stop and remove that program" in text, output(result)


# -- each role documents and checks exactly the variables it has ----------------------------


ROLES = sorted(p.name for p in (COLLECTION_DIR / "roles").iterdir() if p.is_dir())


def test_the_roles_are_the_four_the_issue_names() -> None:
    assert ROLES == ["dns", "exim", "preflight", "ssh_access", "worker_agent"]


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_mirror_the_defaults_and_the_readme_lists_them(role: str) -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with requirements-ansible.txt")
    role_dir = COLLECTION_DIR / "roles" / role
    defaults = yaml.safe_load((role_dir / "defaults" / "main.yml").read_text(encoding="utf-8"))
    options = yaml.safe_load((role_dir / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))[
        "argument_specs"]["main"]["options"]
    assert list(options) == list(defaults), "argument_specs.yml must list the defaults, in the same order"
    for name, spec in options.items():
        assert name.startswith(f"{role}_"), f"{name}: public variables carry the role's name"
        assert spec.get("description"), f"{name}: no description"
        if spec.get("required"):
            assert defaults[name] in ("", None), f"{name}: required, so its default is only a placeholder"
        else:
            assert spec["default"] == defaults[name], f"{name}: default differs from defaults/main.yml"
    lines = (role_dir / "defaults" / "main.yml").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line.startswith(f"{role}_"):
            assert lines[index - 1].startswith("# "), f"{line}: needs a one-line comment above it"
    readme = (role_dir / "README.md").read_text(encoding="utf-8")
    missing = [name for name in options if f"| `{name}` |" not in readme]
    assert missing == [], f"roles/{role}/README.md has no table row for {missing}"
