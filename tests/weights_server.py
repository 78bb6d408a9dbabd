"""A real HTTP server on 127.0.0.1 that serves weight zips the way GitHub releases and the licence server do,
and misbehaves on request (cut transfers, HTML pages, stalls) — for tests/test_install.py.
"""
from __future__ import annotations

import io
import json
import socket
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import DATA

WEIGHTS = DATA / "fake_weights_tiny" / "nnunet" / "results"


def build_zip(folder: str, skip: tuple[str, ...] = (), extra: dict[str, bytes] | None = None) -> bytes:
    """Zip ``<folder>/`` of the fake weights as the official releases do; leave out names ending in ``skip``."""
    src = WEIGHTS / folder
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            name = path.relative_to(src.parent).as_posix()
            if path.is_file() and not name.endswith(skip):
                zf.write(path, name)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/zip"
    cut_after: int | None = None  # close the connection after this many body bytes...
    cut_times: int = 0  # ...this many times
    stall: bool = False  # accept the request and never answer
    ranges: bool = True  # honour Range requests


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes = b""


@dataclass
class WeightsServer:
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    licences: set[str] = field(default_factory=set)  # licence numbers the fake licence server accepts
    licensed: dict[str, bytes] = field(default_factory=dict)  # task name -> zip for POST /download_weights
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def requests_for(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


def _handler(server: WeightsServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _record(self, body: bytes = b"") -> None:
            server.seen.append(Seen(self.command, self.path, dict(self.headers), body))

        def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None,
                  cut_after: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if cut_after is not None:
                self.wfile.write(body[:cut_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_WR)  # FIN, not RST: the client keeps what it got
                return
            self.wfile.write(body)

        def do_GET(self):
            self._record()
            route = server.routes.get(self.path)
            if route is None:
                return self._send(404, b"Not Found", "text/plain")
            if route.stall:
                server.release.wait(60)
                self.close_connection = True
                return
            body, status, headers = route.body, route.status, {}
            rng = self.headers.get("Range")
            if rng and route.ranges and status == 200 and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
                if start >= len(body):
                    return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(body)}"})
                headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                body, status = body[start:], 206
            cut = None
            if route.cut_after is not None and route.cut_times > 0:
                route.cut_times -= 1
                cut = route.cut_after
            self._send(status, body, route.content_type, headers, cut)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._record(body)
            try:
                data = json.loads(body)
            except ValueError:
                return self._send(400, b"bad request", "text/plain")
            if self.path == "/is_valid_license_number":
                ok = data.get("license_number") in server.licences
                answer = {"status": "valid_license" if ok else "invalid_license"}
                return self._send(200, json.dumps(answer).encode(), "application/json")
            if self.path == "/download_weights":
                if data.get("license_number") not in server.licences:
                    return self._send(200, b'{"status": "invalid_license"}', "application/json")
                zipped = server.licensed.get(data.get("task"))
                if zipped is None:
                    return self._send(404, b"Not Found", "text/plain")
                return self._send(200, zipped, "application/octet-stream")
            self._send(404, b"Not Found", "text/plain")

    return Handler


class _QuietServer(ThreadingHTTPServer):
    """A client that drops the connection on purpose (a refused or cut download) is no server error: without
    this, socketserver prints the reset's traceback to stderr, where the tests look for one-line errors."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


def start_server() -> tuple[WeightsServer, ThreadingHTTPServer]:
    state = WeightsServer()
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return state, httpd


def stop_server(state: WeightsServer, httpd: ThreadingHTTPServer) -> None:
    state.release.set()
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    """An address on 127.0.0.1 where nothing listens: the network is off."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def snapshot(root: Path) -> dict[str, object]:
    """Every file and folder under ``root``, with each file's bytes: equal snapshots mean an unchanged home."""
    if not root.exists():
        return {}
    result: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        result[rel] = p.read_bytes() if p.is_file() else "<dir>"
    return result
