"""The agent's venv on a worker holds only what requirements-agent.txt names (the role builds its
wheelhouse from that file), so every package the agent's code imports must be named there: one
missing is an agent that cannot start on a real worker while every test on this machine passes."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _imported_top_level_modules() -> set[str]:
    modules: set[str] = set()
    for path in (REPO_ROOT / "worker_agent").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"worker_agent", "__future__"}


def _pinned_distributions() -> set[str]:
    names = set()
    for line in (REPO_ROOT / "requirements-agent.txt").read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==", line)
        if match:
            names.add(_normalised(match.group(1)))
    return names


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_package_the_agent_imports_is_pinned_in_its_requirements() -> None:
    distributions = importlib.metadata.packages_distributions()
    pinned = _pinned_distributions()
    missing = {}
    for module in sorted(_imported_top_level_modules()):
        owners = {_normalised(d) for d in distributions.get(module, [])}
        assert owners, f"{module} is imported by the agent but installed by no package here"
        if not owners & pinned:
            missing[module] = sorted(owners)
    assert not missing, f"imported by worker_agent/ but not in requirements-agent.txt: {missing}"
