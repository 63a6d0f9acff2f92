"""A local stand-in for the part of Slack's Web API that gpPy uses, for tests.

An HTTP server on 127.0.0.1 (a free port by default) answering, under `<url>` =
``http://127.0.0.1:PORT/api/``:

    auth.test, chat.postMessage, files.getUploadURLExternal,
    files.completeUploadExternal, and the upload URL it hands out (/upload/<file id>)

as Slack does (HTTP 200 with {"ok": false, "error": ...} for API errors). It checks the
bearer token (the upload URL needs none, as at Slack), accepts channel names or IDs in
chat.postMessage but only IDs (``^[CGDZ][A-Z0-9]{8,}$``) in files.completeUploadExternal,
as Slack does, and records every call (method, channel, text, files with their bytes) for
assertions. The token itself is never recorded or logged.

It can be told to misbehave: answer 429 with Retry-After, or 500, for the next N calls
(optionally of one method only), or stop listening (connection refused) and come back.

In a test::

    with SlackStub(token="xoxb-test") as stub:
        ... Notifier(token="xoxb-test", api_url=stub.url, ...) ...
        stub.wait_for(lambda s: s.messages, timeout_s=5)
        assert stub.messages[0].text == "..."

As a process (end-to-end tests)::

    python -m gppy.daemon.slackstub --port 0 --record calls.jsonl [--url-file F]
           [--token-file F] [--channels '#a,#b'] [--rate-limit N --retry-after S]
           [--server-error N] [--record-bytes]

prints ``slackstub listening on URL`` on stdout once it listens, appends each call to
`--record` as one JSON object per line, and takes orders over HTTP:
``POST /_stub/fail`` {"count": N, "status": 429|500, "retry_after": S, "method": M|null},
``POST /_stub/down`` {"seconds": S}, ``POST /_stub/reset``, ``GET /_stub/calls``.
The expected token is read from --token-file, else $SLACK_BOT_TOKEN; with neither, any
non-empty bearer token is accepted. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger("gppy.slackstub")

CHANNEL_ID = re.compile(r"^[CGDZ][A-Z0-9]{8,}$")
METHODS = ("auth.test", "chat.postMessage", "files.getUploadURLExternal",
           "files.completeUploadExternal")


@dataclass
class StubFile:
    id: str
    name: str
    title: str | None
    size: int
    sha256: str
    data: bytes = field(repr=False)


@dataclass
class Call:
    """One request the stand-in answered."""

    method: str                 # an API method, or "upload" for the upload URL
    status: int                 # HTTP status answered
    ok: bool                    # the "ok" of the answer (False for 429/500 and API errors)
    error: str | None           # the API error code, e.g. "invalid_auth", "ratelimited"
    auth: str                   # "ok" | "any" | "missing" | "invalid" | "none needed"
    channel: str | None = None  # as sent (name or ID)
    channel_name: str | None = None  # the name it resolves to
    text: str | None = None
    files: list[StubFile] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def as_json(self, with_bytes: bool = False) -> dict:
        out = asdict(self)
        for f, d in zip(self.files, out["files"]):
            del d["data"]
            if with_bytes:
                d["base64"] = base64.b64encode(f.data).decode("ascii")
        return out


def channel_id(name: str) -> str:
    """The stand-in's stable ID for a channel name ('#loao' -> 'C...')."""
    digest = hashlib.sha1(name.lstrip("#").encode()).hexdigest()[:10].upper()
    return "C" + digest


class SlackStub:
    def __init__(self, token: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 record: str | os.PathLike | None = None, record_bytes: bool = False,
                 channels: list[str] | None = None):
        """`token`: the bearer token to expect (None: any non-empty one); `channels`: the
        channel names that exist (None: every name does); `record`: a JSON-lines file."""
        self._token = token
        self.host, self.port = host, port
        self.record_path = Path(record) if record else None
        self.record_bytes = record_bytes
        self.known = None if channels is None else {channel_id(c): c.lstrip("#") for c in channels}
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._failures: list[dict] = []  # [{"count", "status", "retry_after", "method"}]
        self._pending: dict[str, dict] = {}  # file id -> {"name", "length", "data"}
        self._names: dict[str, str] = {}  # channel ID -> name, for names seen so far
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._revive: threading.Timer | None = None

    def __repr__(self) -> str:
        return f"SlackStub(url={self.url!r}, calls={len(self._calls)})"

    # -- life cycle

    def start(self) -> "SlackStub":
        stub = self

        class Handler(_Handler):
            pass

        Handler.stub = stub
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]  # fixed from now on, also across down/up
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"slackstub-{self.port}", daemon=True)
        self._thread.start()
        log.debug("slackstub listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._revive is not None:
            self._revive.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def __enter__(self) -> "SlackStub":
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/api/"

    @property
    def listening(self) -> bool:
        return self._server is not None

    # -- misbehaviour

    def fail_next(self, count: int, status: int = 500, retry_after: float = 1,
                  method: str | None = None) -> None:
        """Answer `status` (429 with Retry-After `retry_after`, or a 5xx) to the next `count`
        calls (of `method` only, if given; "upload" is the upload URL)."""
        with self._lock:
            self._failures.append({"count": int(count), "status": int(status),
                                   "retry_after": retry_after, "method": method})

    def rate_limit(self, count: int, retry_after: float = 1, method: str | None = None) -> None:
        self.fail_next(count, 429, retry_after, method)

    def server_error(self, count: int, status: int = 500, method: str | None = None) -> None:
        self.fail_next(count, status, method=method)

    def go_down(self, seconds: float | None = None) -> None:
        """Stop listening (connection refused); come back on the same port after `seconds`."""
        self.stop()
        if seconds is not None:
            self._revive = threading.Timer(seconds, self.start)
            self._revive.daemon = True
            self._revive.start()

    def come_up(self) -> None:
        if self._server is None:
            self.start()

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._failures.clear()

    # -- what happened

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    @property
    def messages(self) -> list[Call]:
        """Successful chat.postMessage calls."""
        return [c for c in self.calls if c.method == "chat.postMessage" and c.ok]

    @property
    def shared_files(self) -> list[Call]:
        """Successful files.completeUploadExternal calls (their .files hold the bytes)."""
        return [c for c in self.calls if c.method == "files.completeUploadExternal" and c.ok]

    def wait_for(self, predicate: Callable[["SlackStub"], Any], timeout_s: float = 5.0) -> Any:
        """Poll until predicate(self) is truthy and return it; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate(self)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"slackstub: condition not met within {timeout_s} s; "
                                   f"calls: {[(c.method, c.status, c.error) for c in self.calls]}")
            time.sleep(0.01)

    # -- request handling (called from the server's threads)

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)
            if self.record_path is not None:
                with open(self.record_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(call.as_json(self.record_bytes)) + "\n")

    def _failure_for(self, method: str) -> dict | None:
        with self._lock:
            for f in self._failures:
                if f["count"] > 0 and f["method"] in (None, method):
                    f["count"] -= 1
                    return f
        return None

    def _check_auth(self, header: str | None) -> str:
        if not header or not header.startswith("Bearer ") or not header[7:].strip():
            return "missing"
        if self._token is None:
            return "any"
        return "ok" if header[7:].strip() == self._token else "invalid"

    def _resolve(self, channel: str) -> str | None:
        """The channel's name, or None if it does not exist."""
        if CHANNEL_ID.match(channel):
            if self.known is None:
                return self._names.get(channel, channel)
            return self.known.get(channel)
        name = channel.lstrip("#")
        if not name or (self.known is not None and channel_id(name) not in self.known):
            return None
        self._names[channel_id(name)] = name
        return name

    def answer(self, method: str, params: dict, body: bytes, authorization: str | None
               ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for one request; records the call."""
        failure = self._failure_for(method)
        auth = "none needed" if method == "upload" else self._check_auth(authorization)
        call = Call(method=method, status=200, ok=False, error=None, auth=auth,
                    channel=params.get("channel") or params.get("channel_id"),
                    text=params.get("text") or params.get("initial_comment"),
                    params={k: v for k, v in params.items() if k != "token"})
        if failure is not None:
            call.status = failure["status"]
            headers = {}
            if call.status == 429:
                call.error = "ratelimited"
                headers["Retry-After"] = f"{failure['retry_after']:g}"
            else:
                call.error = "internal_error"
            self._record(call)
            return call.status, headers, _json({"ok": False, "error": call.error})
        if method == "upload":
            return self._upload(call, params["file_id"], body)
        if method not in METHODS:
            call.status, call.error = 404, "unknown_method"
            self._record(call)
            return 404, {}, _json({"ok": False, "error": "unknown_method"})
        if auth in ("missing", "invalid"):
            call.error = "not_authed" if auth == "missing" else "invalid_auth"
            self._record(call)
            return 200, {}, _json({"ok": False, "error": call.error})
        result = getattr(self, "_" + method.replace(".", "_"))(call, params)
        call.ok = bool(result.get("ok"))
        call.error = result.get("error")
        self._record(call)
        return 200, {}, _json(result)

    def _auth_test(self, call: Call, params: dict) -> dict:
        return {"ok": True, "url": "https://gppy-stub.slack.com/", "team": "gppy-stub",
                "user": "gppy", "team_id": "T0STUB0001", "user_id": "U0STUB0001",
                "bot_id": "B0STUB0001"}

    def _chat_postMessage(self, call: Call, params: dict) -> dict:
        channel, text = params.get("channel"), params.get("text")
        call.channel, call.text = channel, text
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        name = self._resolve(str(channel))
        if name is None:
            return {"ok": False, "error": "channel_not_found"}
        if not text and not params.get("blocks") and not params.get("attachments"):
            return {"ok": False, "error": "no_text"}
        call.channel_name = name
        ts = f"{time.time():.6f}"
        return {"ok": True, "channel": channel if CHANNEL_ID.match(channel) else channel_id(name),
                "ts": ts, "message": {"type": "message", "text": text, "ts": ts}}

    def _files_getUploadURLExternal(self, call: Call, params: dict) -> dict:
        name, length = params.get("filename"), params.get("length")
        call.params = {"filename": name, "length": length}
        try:
            length = int(length)
        except (TypeError, ValueError):
            return {"ok": False, "error": "invalid_arguments"}
        if not name:
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._ids):09d}"
        with self._lock:
            self._pending[file_id] = {"name": name, "length": length, "data": None}
        return {"ok": True, "file_id": file_id,
                "upload_url": f"http://{self.host}:{self.port}/upload/{file_id}"}

    def _upload(self, call: Call, file_id: str, body: bytes) -> tuple[int, dict, bytes]:
        with self._lock:
            pending = self._pending.get(file_id)
            if pending is not None:
                pending["data"] = body
        call.params = {"file_id": file_id}
        if pending is None:
            call.status, call.error = 404, "file_not_found"
            self._record(call)
            return 404, {}, b"unknown upload URL"
        call.ok = True
        call.files = [_stub_file(file_id, pending["name"], None, body)]
        self._record(call)
        return 200, {"Content-Type": "text/plain"}, f"OK - {len(body)}".encode()

    def _files_completeUploadExternal(self, call: Call, params: dict) -> dict:
        try:
            files = json.loads(params.get("files") or "")
            assert isinstance(files, list) and files and all("id" in f for f in files)
        except (ValueError, AssertionError):
            return {"ok": False, "error": "invalid_arguments"}
        channel = params.get("channel_id")
        call.channel, call.text = channel, params.get("initial_comment")
        if channel:
            if not CHANNEL_ID.match(channel):  # what Slack answers to a channel *name*
                return {"ok": False, "error": "invalid_arguments",
                        "response_metadata": {"messages": [
                            "[ERROR] input must match regex pattern: ^[CGDZ][A-Z0-9]{8,}$ "
                            "[json-pointer:/channel_id]"]}}
            call.channel_name = self._resolve(channel)
            if call.channel_name is None:
                return {"ok": False, "error": "channel_not_found"}
        done = []
        with self._lock:
            for f in files:
                pending = self._pending.get(f["id"])
                if pending is None or pending["data"] is None:
                    return {"ok": False, "error": "file_not_found"}
                if len(pending["data"]) != pending["length"]:
                    return {"ok": False, "error": "file_upload_size_mismatch"}
                done.append(_stub_file(f["id"], pending["name"], f.get("title"), pending["data"]))
            for f in files:
                del self._pending[f["id"]]
        call.files = done
        return {"ok": True, "files": [{"id": f.id, "name": f.name, "title": f.title or f.name,
                                       "size": f.size} for f in done]}

    # -- control over HTTP (for a stand-in running as its own process)

    def control(self, order: str, params: dict) -> tuple[int, dict, bytes]:
        if order == "calls":
            return 200, {}, _json([c.as_json(self.record_bytes) for c in self.calls])
        if order == "fail":
            self.fail_next(int(params.get("count", 1)), int(params.get("status", 500)),
                           float(params.get("retry_after", 1)), params.get("method"))
        elif order == "down":
            threading.Thread(target=self.go_down, args=(float(params.get("seconds", 5)),),
                             daemon=True).start()
        elif order == "reset":
            self.reset()
        else:
            return 404, {}, _json({"ok": False, "error": f"unknown order {order!r}"})
        return 200, {}, _json({"ok": True})


def _stub_file(file_id: str, name: str, title: str | None, data: bytes) -> StubFile:
    return StubFile(file_id, name, title, len(data), hashlib.sha256(data).hexdigest(), data)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    stub: SlackStub
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # the request line, never the headers
        log.debug("slackstub: " + fmt, *args)

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json; charset=utf-8", **headers}
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _params(self, body: bytes) -> dict:
        url = urlsplit(self.path)
        params: dict[str, Any] = dict(parse_qsl(url.query))
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind == "application/json" and body:
            params.update(json.loads(body))
        elif kind == "application/x-www-form-urlencoded" and body:
            params.update(parse_qsl(body.decode("utf-8")))
        return params

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        try:
            if path.startswith("/api/"):
                answer = self.stub.answer(path[5:], self._params(body), body,
                                          self.headers.get("Authorization"))
            elif path.startswith("/upload/"):
                answer = self.stub.answer("upload", {"file_id": path[8:]}, body, None)
            elif path.startswith("/_stub/"):
                answer = self.stub.control(path[7:], json.loads(body) if body else {})
            else:
                answer = 404, {}, _json({"ok": False, "error": "not_found"})
        except Exception as exc:  # a bug in the stand-in: say so, do not hang the client
            log.exception("slackstub: cannot answer %s", path)
            answer = 400, {}, _json({"ok": False, "error": f"stub: {type(exc).__name__}"})
        self._reply(*answer)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/_stub/"):
            self._reply(*self.stub.control(path[7:], {}))
        else:
            self.do_POST()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gppy.daemon.slackstub",
                                description="A local stand-in for Slack's Web API (tests only).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (default)")
    p.add_argument("--record", help="append every call to this file as JSON lines")
    p.add_argument("--record-bytes", action="store_true", help="include file bytes (base64)")
    p.add_argument("--url-file", help="write the API base URL to this file once listening")
    p.add_argument("--token-file", help="the token to expect (default: $SLACK_BOT_TOKEN, "
                                        "else any non-empty bearer token)")
    p.add_argument("--channels", help="comma-separated channel names that exist (default: all)")
    p.add_argument("--rate-limit", type=int, default=0, metavar="N",
                   help="answer 429 to the first N calls")
    p.add_argument("--retry-after", type=float, default=1.0, metavar="S")
    p.add_argument("--server-error", type=int, default=0, metavar="N",
                   help="answer 500 to the first N calls (after any 429s)")
    p.add_argument("-v", "--verbose", action="store_true", help="log each request on stderr")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(message)s", stream=sys.stderr)
    token = (Path(args.token_file).read_text().strip() if args.token_file
             else os.environ.get("SLACK_BOT_TOKEN", "").strip() or None)
    channels = [c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None
    stub = SlackStub(token=token, host=args.host, port=args.port, record=args.record,
                     record_bytes=args.record_bytes, channels=channels)
    if args.rate_limit:
        stub.rate_limit(args.rate_limit, args.retry_after)
    if args.server_error:
        stub.server_error(args.server_error)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stub.start()
    if args.url_file:
        tmp = Path(args.url_file + ".tmp")
        tmp.write_text(stub.url + "\n")
        tmp.replace(args.url_file)
    print(f"slackstub listening on {stub.url}", flush=True)
    while not stop.wait(0.5):
        pass
    stub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
