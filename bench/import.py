"""List import speed and memory: a generated CSV of N rows (default 1,000,000), the same file
zipped and RAR'd (stored: no free tool compresses RAR), each imported into an empty list of a
fresh database (made by the real migrations) in a child process of its own, through the same
service the panel's import job and the CLI use. The database is SQLite, or with `postgresql` a
database on a throw-away PostgreSQL server (devserver/postgres.py: its test settings, fsync off).

Prints one JSON line per run, then the headline:
{"bench": "import", "rows": N, "database": …, "csv_rows_per_s": …, "zip_rows_per_s": …,
 "rar_rows_per_s": …, "peak_rss_mb": max of the three}
Usage: .venv/bin/python bench/import.py [ROWS] [sqlite|postgresql]
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

from make_rar import Member, rar  # noqa: E402  (the tests' RAR 5 writer)

CHILD = """
import json, sys, time
from pathlib import Path
from flask_migrate import upgrade
from panel import create_app
from panel.extensions import db
from panel.models import MailingList, User
from panel.services.csv_import import import_file

def peak_rss_mb():  # VmHWM: this process's own peak (ru_maxrss would count the parent it was forked from)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)

database, path = sys.argv[1], Path(sys.argv[2])
app = create_app({"SQLALCHEMY_DATABASE_URI": database, "SECRET_KEY": "bench"})
with app.app_context():
    upgrade()
    user = User(email="bench@example.org", password_hash="x")
    db.session.add(user)
    db.session.flush()
    mailing_list = MailingList(user_id=user.id, name="bench", fields=[], recipient_count=0)
    db.session.add(mailing_list)
    db.session.commit()
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    report = import_file(mailing_list, path, path.name)
    db.session.commit()
    seconds = time.perf_counter() - started
    print(json.dumps({"added": report.added, "rejected": report.rejected_count, "seconds": round(seconds, 2),
                      "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb()}))
"""


def generate(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write("email,first_name,last_name,city,plan\n")
        for i in range(rows):
            out.write(f"user{i}@example{i % 997}.org,First{i},Last{i % 5000},City {i % 300},{('free', 'gold')[i % 2]}\n")


def run(kind: str, path: Path, rows: int, workdir: Path, database: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, database, str(path)], cwd=ROOT, capture_output=True,
                            text=True, check=False, env={"MAILFLEET_INSTANCE_PATH": str(workdir), "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise SystemExit(f"{kind}: {result.stderr.strip().splitlines()[-1]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    line = {"bench": "import", "kind": kind, "rows": rows, "bytes": path.stat().st_size,
            "rows_per_s": round(figures["added"] / figures["seconds"]), **figures}
    print(json.dumps(line), flush=True)
    return line


def main() -> int:
    numbers = [arg for arg in sys.argv[1:] if arg.isdigit()]
    rows = int(numbers[0]) if numbers else 1_000_000
    backend = "postgresql" if "postgresql" in sys.argv[1:] else "sqlite"
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailfleet-bench-import-")))
        if backend == "postgresql":
            from devserver.postgres import PostgresServer

            server = stack.enter_context(PostgresServer())
            database_for = server.create_database
        else:
            def database_for(kind: str) -> str:
                return f"sqlite:///{workdir / f'{kind}.db'}"
        plain = workdir / "list.csv"
        generate(plain, rows)
        zipped = workdir / "list.zip"
        with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(plain, "list.csv")
        packed = workdir / "list.rar"
        packed.write_bytes(rar([Member("list.csv", plain.read_bytes())]))
        results = {kind: run(kind, path, rows, workdir, database_for(kind)) for kind, path in
                   (("csv", plain), ("zip", zipped), ("rar", packed))}
    headline = {"bench": "import", "rows": rows, "database": backend,
                **{f"{kind}_rows_per_s": line["rows_per_s"] for kind, line in results.items()},
                "peak_rss_mb": max(line["peak_rss_mb"] for line in results.values())}
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
