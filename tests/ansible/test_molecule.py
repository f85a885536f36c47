"""The molecule scenarios (molecule/*/), one per role plus the worker roles on Debian 13.

Each runs `molecule test -s NAME` from the repository root: a fresh nspawn test host
(devserver/testhost.py, through devserver/molecule_host.py), converge, a second converge that
must change nothing, verify.yml (what the role built does what it should), destroy. A test
host is stopped even when molecule fails midway (destroy runs last; a finalizer stops any
that is left). Also: ansible-lint (production profile) and yamllint pass on molecule/.

Skipped with the reason when test hosts cannot run here or molecule is not installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MOLECULE_DIR = REPO_ROOT / "molecule"
COLLECTIONS_PATH = REPO_ROOT / "ansible" / ".collections"
VENV_BIN = Path(sys.executable).parent
SCENARIOS = sorted(p.parent.name for p in MOLECULE_DIR.glob("*/molecule.yml"))
RELEASES = {"trixie": "trixie"}  # the others boot Debian 12 (bookworm)
TIMEOUT = 1800  # seconds; a worker scenario takes 3-5 minutes on two cores

testhost = pytest.importorskip("devserver.testhost", reason="devserver/testhost.py (nspawn test hosts) is not there")
molecule_host = pytest.importorskip("devserver.molecule_host")


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {VENV_BIN}: `{sys.executable} -m pip install -r requirements-ansible.txt`")
    return str(path)


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    for name in ("molecule", "ansible-playbook", "ansible-lint", "yamllint"):
        _tool(name)
    if not (COLLECTIONS_PATH / "ansible_collections" / "mailfleet" / "fleet").exists():
        pytest.skip("the collections are not unpacked: run scripts/ansible-collections.sh")
    return molecule_host.ansible_env(VENV_BIN)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- output (tail)\n{result.stdout[-15000:]}"


def test_there_is_a_scenario_per_role_and_one_for_trixie() -> None:
    roles = sorted(p.name for p in (REPO_ROOT / "ansible" / "roles").iterdir() if p.is_dir())
    assert SCENARIOS == sorted([*roles, "trixie"])


def test_ansible_lint_passes_on_the_scenarios(env: dict[str, str]) -> None:
    result = subprocess.run([_tool("ansible-lint"), "--profile", "production", "--nocolor", "molecule/"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_yamllint_passes_on_the_scenarios(env: dict[str, str]) -> None:
    result = subprocess.run([_tool("yamllint"), "--strict", "--format", "parsable", "molecule/", ".config/molecule/"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def ephemeral(tmp_path: Path) -> Iterator[Path]:
    """The scenario's ephemeral directory; its test host is stopped whatever happened."""
    directory = tmp_path / "ephemeral"
    try:
        yield directory
    finally:
        if molecule_host.down(directory / "testhost"):
            print(f"stopped a test host molecule left running in {directory}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(env: dict[str, str], ephemeral: Path, scenario: str) -> None:
    try:
        testhost.check_prerequisites(proxy=True, release=RELEASES.get(scenario, "bookworm"))
    except testhost.TestHostUnavailable as exc:
        pytest.skip(str(exc))
    result = subprocess.run(
        [_tool("molecule"), "test", "-s", scenario],
        cwd=REPO_ROOT, env={**env, "MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT, check=False,
    )
    assert result.returncode == 0, _output(result)
    # Each step ran and passed: a second converge changed nothing, verify.yml held.
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        # "exim ➜ verify: …" on a terminal, "exim > verify: …" with NO_COLOR.
        assert re.search(rf"^{scenario} (➜|>) {step}: Executed: Successful", result.stdout, re.M), _output(result)
