"""The plumbing of the tests' local HTTP stand-ins (VizieR, SkyBoT): a threaded
server on a free local port, and a reply helper."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(handler_class: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (a free port: .server_port), answering in a daemon
    thread until .shutdown()."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server


def reply(handler: BaseHTTPRequestHandler, status: int, payload: bytes,
          content_type: str = "text/xml") -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)
