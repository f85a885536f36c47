"""Exim's pipe for mail to bounce+<token>@ and unsubscribe+<token>@ addresses. STDLIB ONLY.

Exim runs it as its own user: ``/usr/bin/python3 /abs/path/worker_agent/bounce_intake.py SPOOL``
with the message on stdin and the address in $RECIPIENT. The message is written to
``SPOOL/tmp/`` and renamed into ``SPOOL/new/`` (atomic, Maildir style) under a name that
carries the kind and the token: ``<ns>_<pid>_<random>_<kind>_<token>``. Exit 0 once it is
safely on disk, 75 (EX_TEMPFAIL) otherwise so that Exim keeps the message and retries.
"""

import os
import sys

# Run as a script, Python puts this directory first on sys.path, where our queue.py would
# shadow the stdlib module of that name: take it off before anything else is imported.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import re  # noqa: E402
import time  # noqa: E402

EX_OK = 0
EX_USAGE = 64
EX_TEMPFAIL = 75
KINDS = ("bounce", "unsubscribe")
_ADDRESS = re.compile(r"^(?P<kind>bounce|unsubscribe)\+(?P<token>[A-Za-z0-9._=-]{1,128})@", re.IGNORECASE)


def kind_and_token(env):
    """("bounce" | "unsubscribe" | "unknown", token or "") from Exim's pipe environment."""
    candidates = [env.get("RECIPIENT", ""),
                  env.get("LOCAL_PART_PREFIX", "") + env.get("LOCAL_PART", "") + "@" + env.get("DOMAIN", "")]
    for address in candidates:
        m = _ADDRESS.match(address)
        if m:
            return m.group("kind").lower(), m.group("token")
    return "unknown", ""


def spool_name(kind, token):
    return "%d_%d_%s_%s_%s" % (time.time_ns(), os.getpid(), os.urandom(4).hex(), kind, token)


def parse_spool_name(name):
    """(kind, token or None) from a spool file name; None for a name that is not ours."""
    parts = name.split("_", 4)
    if len(parts) != 5 or not parts[0].isdigit():
        return None
    return parts[3], parts[4] or None


def deliver(spool, data, kind, token):
    """Write ``data`` into spool/new/ atomically; return the final path."""
    name = spool_name(kind, token)
    tmp = os.path.join(spool, "tmp", name)
    final = os.path.join(spool, "new", name)
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, final)
    dir_fd = os.open(os.path.dirname(final), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut only once the directory is synced
    finally:
        os.close(dir_fd)
    return final


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: bounce_intake.py SPOOL_DIR   (message on stdin, address in $RECIPIENT)\n")
        return EX_USAGE
    try:
        os.umask(0o007)
        data = sys.stdin.buffer.read()
        kind, token = kind_and_token(os.environ)
        deliver(argv[0], data, kind, token)
    except Exception as exc:  # anything at all: Exim must keep the message and try again
        sys.stderr.write("bounce intake failed, Exim will retry: %s\n" % (exc,))
        return EX_TEMPFAIL
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
