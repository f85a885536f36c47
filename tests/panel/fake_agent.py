"""A stand-in worker agent for the daemon's tests: real HTTPS on 127.0.0.1 with a self-signed
certificate the panel pins like a real agent's, bodies sealed with the server's key; honest by
default, hostile on request (a worker's root may run anything on its port).

    python tests/panel/fake_agent.py CONFIG.json

CONFIG holds port, cert_file, key_file, agent_key, mode, and for some modes target / bomb_zlib /
report_file. `mode` says how /v1/ping is answered (every other path is answered honestly):

- honest        the sealed {"config_version": 0} a fresh agent gives
- odd-ping      the same with a config version past any integer column (2**40)
- many-values   a sealed reply whose data is 3 million empty lists (9 MB of JSON, a few KB sealed)
- deep          a sealed reply whose data nests 100,000 lists deep
- redirect      307 to `target`
- redirect-huge 302 to `target` with 100 MB of body
- huge          200 with 100 MB and no Content-Length (the body ends when the connection does)
- huge-declared 200 with 100 MB, Content-Length saying so
- bomb          200 with `bomb_zlib` (zlib of a JSON envelope 1 GB long) sealed with the server's key
- drip-headers  the status line, then a header one byte a second
- drip-body     headers, then the body one byte a second
- error         a sealed 400 whose error is HTML, control characters and 1 MB of text
- refusal       403 text/plain with the same text
- slow          every path answered honestly, but only after `delay` seconds (a slow or far agent)

With `record_file`, every request is appended to it as a JSON line {"t": time, "path": …, "batch_id": …}
when it arrives (batch_id and the letters' ids for pushes only): which daemon-side calls reached this agent, and when.

/v1/outcomes answers with the items of `report_file` (JSON {"events": [...], "bounces": [...]},
each item with its seq) whose seq is above the panel's ack, read anew on every call.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.fernet import Fernet  # noqa: E402

from worker_agent import protocol  # noqa: E402

HUGE = 100 * 1024 * 1024
# What a hostile agent puts in an error: markup, a terminal escape, a NUL, then 1 MB of text.
ERROR_TEXT = "<script>alert('agent')</script><b>bold</b>\x1b[31m\x00 red " + "A" * (1024 * 1024)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real agent's gunicorn
    config: dict = {}

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write("fake agent: " + (format % args) + "\n")

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.config["agent_key"].encode()
        if self.config.get("record_file"):
            self._record(key, body)
        if self.config["mode"] == "slow":
            time.sleep(float(self.config.get("delay", 3)))
        mode = self.config["mode"] if self.path == "/v1/ping" and self.config["mode"] != "slow" else "honest"
        if mode in ("many-values", "deep"):
            opened = protocol.unseal(key, self.path, body)
            data = b"[" + b"[]," * 3_000_000 + b"[]]" if mode == "many-values" else b"[" * 100_000 + b"]" * 100_000
            envelope = b'{"path":"%s","nonce":"n","reply_to":"%s","data":%s}' % (
                self.path.encode(), opened.nonce.encode(), data)
            return self._send(200, Fernet(key).encrypt(zlib.compress(envelope)), protocol.CONTENT_TYPE)
        if mode == "odd-ping":
            opened = protocol.unseal(key, self.path, body)
            _, sealed = protocol.seal(key, self.path, {"config_version": 2**40}, reply_to=opened.nonce)
            return self._send(200, sealed, protocol.CONTENT_TYPE)
        try:
            if mode == "redirect":
                return self._send(307, b"", "text/plain", Location=self.config["target"])
            if mode == "redirect-huge":
                return self._huge(f"302 Found\r\nLocation: {self.config['target']}")
            if mode == "huge":
                return self._huge()
            if mode == "huge-declared":
                return self._huge(f"200 OK\r\nContent-Length: {HUGE}")
            if mode == "bomb":
                return self._send(200, self.config["bomb"], protocol.CONTENT_TYPE)
            if mode == "drip-headers":
                return self._drip(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            if mode == "drip-body":
                return self._drip(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: 600\r\n\r\n"
                                  % protocol.CONTENT_TYPE.encode())
            if mode == "refusal":
                return self._send(403, ERROR_TEXT.encode(), "text/plain")
            opened = protocol.unseal(key, self.path, body)
            if mode == "error":
                reply, status = {"error": ERROR_TEXT}, 400
            else:
                reply, status = self._honest(opened.data), 200
            _, sealed = protocol.seal(key, self.path, reply, reply_to=opened.nonce)
            self._send(status, sealed, protocol.CONTENT_TYPE)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True  # the panel hung up on us: what a hostile reply should get

    def _record(self, key: bytes, body: bytes) -> None:
        entry = {"t": time.time(), "path": self.path}
        if self.path == "/v1/batches":
            data = protocol.unseal(key, self.path, body).data
            entry["batch_id"], entry["ids"] = data.get("batch_id"), [r.get("id") for r in data.get("recipients", [])]
        with open(self.config["record_file"], "a") as f:  # one short write a line: whole lines
            f.write(json.dumps(entry) + "\n")

    def _honest(self, data: object) -> object:
        if self.path == "/v1/ping":
            return {"config_version": 0}
        if self.path == "/v1/outcomes":
            ack = data.get("ack", 0) if isinstance(data, dict) else 0
            report_file = self.config.get("report_file")
            report = json.loads(Path(report_file).read_text()) if report_file and Path(report_file).exists() else {}
            fresh = lambda item: not isinstance(item.get("seq"), int) or item["seq"] > ack  # noqa: E731 (bad seqs too)
            return {name: [item for item in report.get(name, []) if fresh(item)] for name in ("events", "bounces")}
        return {}  # batches, campaign states, config: taken

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _huge(self, head: str = "200 OK") -> None:
        self.close_connection = True
        self.wfile.write(f"HTTP/1.1 {head}\r\nContent-Type: {protocol.CONTENT_TYPE}\r\nConnection: close\r\n\r\n"
                         .encode())
        chunk = b"A" * (1024 * 1024)
        for _ in range(HUGE // len(chunk)):
            self.wfile.write(chunk)

    def _drip(self, head: bytes) -> None:
        self.close_connection = True
        self.wfile.write(head)
        self.wfile.flush()
        for _ in range(600):
            time.sleep(1)
            self.wfile.write(b"a")
            self.wfile.flush()


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    if config["mode"] == "bomb":  # sealed the way the panel opens replies: Fernet(zlib(JSON))
        config["bomb"] = Fernet(config["agent_key"].encode()).encrypt(Path(config["bomb_zlib"]).read_bytes())
    Handler.config = config
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config["cert_file"], config["key_file"])
    server = ThreadingHTTPServer(("127.0.0.1", config["port"]), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
