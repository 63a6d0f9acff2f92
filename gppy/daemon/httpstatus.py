"""A small read-only HTTP endpoint with the daemon's state as JSON
(`gpwatch ... --http 127.0.0.1:8003`): GET / or /status. Nothing can be changed
through it; it listens on localhost unless told otherwise."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from gppy.errors import InputError


def parse_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:8003' or ':8003' (localhost) or '8003' -> (host, port)."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise InputError(f"--http {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8003") from None
    if not 0 <= number < 65536:
        raise InputError(f"--http {text!r}: port out of range")
    return host or "127.0.0.1", number


def serve(address: tuple[str, int], state: Callable[[], dict]) -> ThreadingHTTPServer:
    """Start serving `state()` in a daemon thread; `.shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/", "/status"):
                self.send_error(404, "only /status is served")
                return
            body = json.dumps(state(), default=str).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # no per-request lines in the daemon's log
            pass

    server = ThreadingHTTPServer(address, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="gpwatch-http", daemon=True).start()
    return server
