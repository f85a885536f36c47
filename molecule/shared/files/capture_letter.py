"""Run on the controller: be the recipients' mail server on HOST:PORT until one letter arrives.

    capture_letter.py HOST PORT TIMEOUT

Prints, as JSON, what that server saw (devserver.mail_capture): the client's IP and HELO
name, the envelope, and the letter's header names.
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from devserver.mail_capture import CaptureServer, wait_for_count  # noqa: E402


def main() -> int:
    host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with tempfile.TemporaryDirectory(prefix="mfmol-capture-") as tmp, \
            CaptureServer(Path(tmp) / "maildir", host=host, port=port) as server:
        letter = wait_for_count(server, 1, timeout)[0]
        print(json.dumps({"peer": letter.peer_ip, "helo": letter.helo, "mail_from": letter.mail_from,
                          "rcpt_to": letter.rcpt_to, "headers": list(letter.message.keys())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
