"""The bounce intake as Exim's pipe runs it, and the sender's collection into the queue."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker_agent import bounce_spool
from worker_agent.queue import QueueDB

from .conftest import make_campaign, make_recipient

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "worker_agent" / "bounce_intake.py"
SYSTEM_PYTHON = "/usr/bin/python3"
DSN = (b"Return-path: <>\nX-Failed-Recipients: user1@example.org\nSubject: Mail delivery failed\n\n"
       b"This message was created automatically by mail delivery software.\n\xe2\x9c\x93 not ASCII\n")


def pipe(spool: Path, data: bytes, recipient: str, *argv: str) -> subprocess.CompletedProcess:
    """Run the intake exactly as Exim's pipe transport does."""
    env = {"RECIPIENT": recipient, "LOCAL_PART": recipient.split("@")[0], "DOMAIN": recipient.split("@")[-1],
           "PATH": "/usr/bin:/bin"}
    command = list(argv) or [SYSTEM_PYTHON, str(SCRIPT), str(spool)]
    return subprocess.run(command, input=data, env=env, capture_output=True, timeout=30, cwd="/")


def files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.exists() else []


def test_the_intake_uses_only_the_standard_library() -> None:
    tree = ast.parse(SCRIPT.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names)


@pytest.mark.parametrize("address, kind, token", [
    ("bounce+9001-3f2a9c1b7e@bounces.example.com", "bounce", "9001-3f2a9c1b7e"),
    ("unsubscribe+9001-3f2a9c1b7e@bounces.example.com", "unsubscribe", "9001-3f2a9c1b7e"),
    ("postmaster@bounces.example.com", "unknown", ""),
])
def test_a_piped_message_lands_whole_in_new(tmp_path: Path, address: str, kind: str, token: str) -> None:
    result = pipe(tmp_path, DSN, address)
    assert result.returncode == 0, result.stderr
    (stored,) = files(tmp_path / "new")
    assert stored.read_bytes() == DSN
    assert stored.name.endswith(f"_{kind}_{token}")
    assert files(tmp_path / "tmp") == []


def test_the_module_entry_point_does_the_same(tmp_path: Path) -> None:
    env = {"RECIPIENT": "bounce+7-x@b.test", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "worker_agent", "bounce-intake", str(tmp_path)],
                            input=DSN, env=env, capture_output=True, cwd="/", timeout=30)
    assert result.returncode == 0, result.stderr
    (stored,) = files(tmp_path / "new")
    assert stored.name.endswith("_bounce_7-x") and stored.read_bytes() == DSN


def test_nothing_is_visible_until_the_whole_message_is_written(tmp_path: Path) -> None:
    process = subprocess.Popen([SYSTEM_PYTHON, str(SCRIPT), str(tmp_path)], stdin=subprocess.PIPE,
                               env={"RECIPIENT": "bounce+1-a@b.test"})
    assert process.stdin is not None
    process.stdin.write(DSN[:20])
    process.stdin.flush()
    time.sleep(0.3)
    assert files(tmp_path / "new") == []
    process.stdin.write(DSN[20:])
    process.stdin.close()
    assert process.wait(timeout=30) == 0
    (stored,) = files(tmp_path / "new")
    assert stored.read_bytes() == DSN


def test_a_failure_is_a_temporary_error_for_exim(tmp_path: Path) -> None:
    blocked = tmp_path / "spool"
    blocked.write_text("a file where the spool directory should be")
    result = pipe(blocked, DSN, "bounce+1-a@b.test", SYSTEM_PYTHON, str(SCRIPT), str(blocked))
    assert result.returncode == 75  # EX_TEMPFAIL: Exim keeps the message and retries
    assert b"Exim will retry" in result.stderr


def test_usage_error(tmp_path: Path) -> None:
    result = subprocess.run([SYSTEM_PYTHON, str(SCRIPT)], input=b"", capture_output=True)
    assert result.returncode == 64


def test_two_messages_at_once_never_collide(tmp_path: Path) -> None:
    processes = [subprocess.Popen([SYSTEM_PYTHON, str(SCRIPT), str(tmp_path)], stdin=subprocess.PIPE,
                                  env={"RECIPIENT": f"bounce+{i}-t@b.test"}) for i in range(8)]
    for i, process in enumerate(processes):
        process.communicate(DSN + str(i).encode())
        assert process.returncode == 0
    assert len(files(tmp_path / "new")) == 8


# -- collection into the queue -------------------------------------------------------------------


def test_collected_bounces_become_rows_and_the_files_go(tmp_path: Path, queue_db: QueueDB) -> None:
    queue_db.queue_batch("b", make_campaign(), [make_recipient(9001, token="9001-AbC")])
    spool = tmp_path / "spool"
    pipe(spool, b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n" + DSN, "bounce+9001-abc@bounces.test")
    pipe(spool, b"Subject: unsubscribe\n\nplease\n", "unsubscribe+9001-AbC@bounces.test")
    assert bounce_spool.collect(queue_db, spool) == 2
    assert files(spool / "new") == []
    bounces = queue_db.outcomes(0)["bounces"]
    assert [(b["kind"], b["token"]) for b in bounces] == [("bounce", "9001-AbC"), ("unsubscribe", "9001-AbC")]
    assert bounces[0]["raw"] == DSN.decode()  # the mbox "From " line a pipe may add is dropped
    assert bounce_spool.collect(queue_db, spool) == 0


def test_a_file_collected_twice_is_stored_once(tmp_path: Path, queue_db: QueueDB) -> None:
    spool = tmp_path / "spool"
    pipe(spool, DSN, "bounce+1-a@b.test")
    (stored,) = files(spool / "new")
    copy = stored.read_bytes()
    assert bounce_spool.collect(queue_db, spool) == 1
    stored.write_bytes(copy)  # as if the sender died between the commit and the delete
    assert bounce_spool.collect(queue_db, spool) == 0
    assert files(spool / "new") == []
    assert len(queue_db.outcomes(0)["bounces"]) == 1


def test_stale_half_written_files_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    old, fresh = tmp_path / "tmp" / "old", tmp_path / "tmp" / "fresh"
    old.write_text("x")
    fresh.write_text("y")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    bounce_spool.remove_stale_tmp(tmp_path)
    assert files(tmp_path / "tmp") == [fresh]
