"""The Slack notifier against the local stand-in of Slack's Web API: real HTTP exchanges
through slack-sdk, nothing mocked."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gppy.daemon.slack import Notifier, RetryPolicy, read_token_file
from gppy.daemon.slackstub import CHANNEL_ID, SlackStub
from gppy.errors import InputError
from gppy.settings import SettingsError, load_settings, settings_file

TOKEN = "xoxb-1234567890-TESTSECRET-abcdefABCDEF"
FAST = RetryPolicy(max_retries=3, backoff_s=0.05, message_budget_s=5.0, request_timeout_s=2.0,
                   check_auth=False)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("SLACK_BOT_TOKEN", "GPPY_SLACK_API_URL", "http_proxy", "https_proxy",
                 "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


class Records(logging.Handler):
    """Every log record of the process, debug included, as rendered text."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def events(self, name: str) -> list[dict]:
        return [r.msg for r in self.records if isinstance(r.msg, dict) and r.msg.get("event") == name]

    def texts(self) -> list[str]:
        out = []
        for r in self.records:
            text = f"{r.name} {r.levelname} {r.getMessage()}"
            if r.exc_info:
                text += logging.Formatter().formatException(r.exc_info)
            out.append(text)
        return out

    def wait_for(self, name: str, count: int = 1, timeout_s: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while len(self.events(name)) < count:
            assert time.monotonic() < deadline, f"no {name!r} event within {timeout_s} s"
            time.sleep(0.01)
        return self.events(name)


@pytest.fixture
def logs_seen():
    from gppy import logs
    logs.get()  # routes structlog through logging, gppy at debug
    handler, root = Records(), logging.getLogger()
    root.addHandler(handler)
    loggers = [logging.getLogger(n) for n in ("gppy.slack.sdk", "gppy.slackstub")]
    levels = [lg.level for lg in loggers]
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@pytest.fixture
def stub():
    with SlackStub(token=TOKEN) as s:
        yield s


@pytest.fixture
def notifiers():
    made: list[Notifier] = []

    def make(*args, **kwargs) -> Notifier:
        kwargs.setdefault("policy", FAST)
        n = Notifier(*args, **kwargs)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close(timeout_s=1.0)


def write_settings(text: str) -> Path:
    path = settings_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------ delivery

def test_message_reaches_the_observatory_channel_or_the_default(stub, notifiers, logs_seen):
    n = notifiers(TOKEN, api_url=stub.url, channels={"LOAO": "#loao", "7DT01": "#7dt"},
                  default_channel="#gppy")
    assert n.post("loao", "night 2024-02-29 done: 42 frames")
    assert n.post("7dt01", "night started")
    assert n.post("KCT", "night failed: <no flats> & more")
    assert n.flush(5)
    got = [(c.channel, c.channel_name, c.text, c.auth) for c in stub.messages]
    assert got == [("#loao", "loao", "night 2024-02-29 done: 42 frames", "ok"),
                   ("#7dt", "7dt", "night started", "ok"),
                   ("#gppy", "gppy", "night failed: <no flats> & more", "ok")]
    assert not logs_seen.events("slack message dropped")


def test_observatory_without_channel_is_only_logged(stub, notifiers, logs_seen):
    n = notifiers(TOKEN, api_url=stub.url, channels={"LOAO": "#loao"})
    assert not n.post("SOAO", "first")
    assert not n.post("soao", "second")
    assert n.flush(5)
    warnings = [e for e in logs_seen.events("slack: no channel for this observatory; its "
                                            "messages are only logged")]
    assert len(warnings) == 1
    assert [e["text"] for e in logs_seen.events("notification")] == ["first", "second"]
    assert stub.calls == []


def test_files_upload_round_trip(stub, notifiers, logs_seen, tmp_path):
    stamps = []
    for i, size in enumerate((1, 70_000)):
        stamps.append(tmp_path / f"stamp{i}.png")
        stamps[-1].write_bytes(os.urandom(size))
    n = notifiers(TOKEN, api_url=stub.url, channels={"LOAO": "#loao"})
    n.post("LOAO", "new transient candidates", files=stamps + [tmp_path / "missing.png"])
    assert n.flush(5)
    assert [c.text for c in stub.messages] == ["new transient candidates"]
    (shared,) = stub.shared_files
    assert CHANNEL_ID.match(shared.channel) and shared.channel_name == "loao"
    assert [f.name for f in shared.files] == ["stamp0.png", "stamp1.png"]
    assert [f.data for f in shared.files] == [p.read_bytes() for p in stamps]
    (unsent,) = logs_seen.events("slack files not sent")
    assert "missing.png" in unsent["files"][0]
    assert not logs_seen.events("slack files dropped")


# ------------------------------------------------------------------ retries

def test_rate_limit_waits_retry_after_then_succeeds(stub, notifiers):
    stub.rate_limit(1, retry_after=1, method="chat.postMessage")
    n = notifiers(TOKEN, api_url=stub.url, default_channel="#gppy")
    started = time.monotonic()
    n.post("LOAO", "rate limited once")
    assert n.flush(5)
    posts = [c for c in stub.calls if c.method == "chat.postMessage"]
    assert [(c.status, c.error) for c in posts] == [(429, "ratelimited"), (200, None)]
    assert posts[1].time - posts[0].time >= 1.0  # Retry-After respected
    assert time.monotonic() - started < 3
    assert [c.text for c in stub.messages] == ["rate limited once"]


def test_server_error_twice_then_success(stub, notifiers, logs_seen):
    stub.server_error(2)
    n = notifiers(TOKEN, api_url=stub.url, default_channel="#gppy")
    n.post("LOAO", "after two 500s")
    assert n.flush(5)
    assert [c.status for c in stub.calls] == [500, 500, 200]
    assert [c.text for c in stub.messages] == ["after two 500s"]
    assert [e["reason"] for e in logs_seen.events("slack retry")] == ["HTTP 500", "HTTP 500"]


def test_upload_url_failure_is_retried(stub, notifiers, tmp_path):
    stamp = tmp_path / "stamp.png"
    stamp.write_bytes(b"\x89PNG" * 100)
    stub.server_error(1, status=503, method="upload")
    n = notifiers(TOKEN, api_url=stub.url, default_channel="#gppy")
    n.post("LOAO", "with a stamp", files=[stamp])
    assert n.flush(5)
    assert [c.status for c in stub.calls if c.method == "upload"] == [503, 200]
    assert stub.shared_files[0].files[0].data == stamp.read_bytes()


def test_retry_after_beyond_the_budget_drops_at_once(stub, notifiers, logs_seen):
    stub.rate_limit(1, retry_after=30)
    n = notifiers(TOKEN, api_url=stub.url, default_channel="#gppy")
    started = time.monotonic()
    n.post("LOAO", "would wait 30 s")
    (dropped,) = logs_seen.wait_for("slack message dropped")
    assert time.monotonic() - started < 1
    assert "429" in dropped["reason"] and "budget" in dropped["reason"]
    assert dropped["text"] == "would wait 30 s"


def test_permanent_api_error_is_not_retried(notifiers, logs_seen):
    with SlackStub(token=TOKEN, channels=["#gppy"]) as stub:
        n = notifiers(TOKEN, api_url=stub.url, default_channel="#typo")
        n.post("LOAO", "to a channel that does not exist")
        assert n.flush(5)
        assert [(c.method, c.error) for c in stub.calls] == [("chat.postMessage", "channel_not_found")]
    (dropped,) = logs_seen.events("slack message dropped")
    assert dropped["reason"].startswith("Slack refused it: channel_not_found; check the channel")
    assert not logs_seen.events("slack retry")


def test_slack_down_post_returns_at_once_then_drops(stub, notifiers, logs_seen):
    url = stub.url
    stub.go_down()  # nothing listens any more: connection refused
    n = notifiers(TOKEN, api_url=url, default_channel="#gppy")
    durations = []
    for i in range(3):
        started = time.perf_counter()
        assert n.post("LOAO", f"message {i}")
        durations.append(time.perf_counter() - started)
    assert max(durations) < 0.05
    dropped = logs_seen.wait_for("slack message dropped", count=3, timeout_s=10)
    assert [d["text"] for d in dropped] == ["message 0", "message 1", "message 2"]
    assert all("cannot connect" in d["reason"] and "after 4 attempts" in d["reason"]
               for d in dropped)
    assert len(logs_seen.events("slack retry")) == 9  # 3 retries each
    started = time.monotonic()
    n.close(timeout_s=1.0)
    assert time.monotonic() - started < 1.1


def test_close_is_bounded_while_retrying(stub, notifiers, logs_seen):
    url = stub.url
    stub.go_down()
    slow = RetryPolicy(max_retries=5, backoff_s=20, message_budget_s=300, check_auth=False)
    n = notifiers(TOKEN, api_url=url, default_channel="#gppy", policy=slow)
    for i in range(3):
        n.post("LOAO", f"queued {i}")
    logs_seen.wait_for("slack retry")  # the first message is waiting ~20 s before a retry
    started = time.monotonic()
    n.close(timeout_s=0.5)
    assert time.monotonic() - started < 0.7
    dropped = logs_seen.events("slack message dropped")
    assert [(d["text"], d["reason"]) for d in dropped] == [
        (f"queued {i}", "shutting down") for i in range(3)]
    assert not n.post("LOAO", "after close")
    assert logs_seen.events("slack message dropped")[-1]["reason"] == "the notifier is closed"


def test_full_queue_drops_new_messages_without_blocking(stub, notifiers, logs_seen):
    url = stub.url
    stub.go_down()
    n = notifiers(TOKEN, api_url=url, default_channel="#gppy",
                  policy=RetryPolicy(backoff_s=20, queue_size=2, check_auth=False))
    logs_seen.records.clear()
    results = [n.post("LOAO", f"m{i}") for i in range(6)]
    assert results.count(True) in (2, 3)  # 2 waiting (+1 already taken up by the thread)
    full = [d for d in logs_seen.events("slack message dropped") if "queue is full" in d["reason"]]
    assert len(full) == results.count(False)


# ------------------------------------------------------------------ no token, token hygiene

def test_no_token_only_logs_after_one_warning(stub, notifiers, logs_seen, monkeypatch):
    monkeypatch.setenv("GPPY_SLACK_API_URL", stub.url)
    write_settings('[slack]\ndefault_channel = "#gppy"\n')
    n = Notifier.from_settings(policy=FAST)
    assert not n.enabled
    assert not n.post("LOAO", "night detected")
    assert not n.post("LOAO", "night done")
    n.close()
    warnings = [r for r in logs_seen.records if r.levelno >= logging.WARNING]
    assert [r.msg["event"] for r in warnings] == ["slack disabled: no token; messages are only logged"]
    infos = logs_seen.events("notification")
    assert [(e["text"], e["level"]) for e in infos] == [("night detected", "info"),
                                                        ("night done", "info")]
    assert stub.calls == []


def test_token_never_appears_in_logs_reprs_or_records(tmp_path, notifiers, logs_seen):
    logging.getLogger("gppy.slack.sdk").setLevel(logging.DEBUG)  # slack-sdk's own debug lines too
    logging.getLogger("gppy.slackstub").setLevel(logging.DEBUG)
    record = tmp_path / "calls.jsonl"
    stamp = tmp_path / "stamp.png"
    stamp.write_bytes(b"stamp bytes")
    with SlackStub(token=TOKEN, record=record, record_bytes=True) as stub:
        stub.rate_limit(1, retry_after=1, method="chat.postMessage")
        stub.server_error(1, method="files.getUploadURLExternal")
        policy = RetryPolicy(max_retries=3, backoff_s=0.05, message_budget_s=5, check_auth=True)
        good = notifiers(TOKEN, api_url=stub.url, default_channel="#gppy", policy=policy)
        good.post("LOAO", "hello", files=[stamp])
        assert good.flush(5)
        assert [c.text for c in stub.messages] == ["hello"] and stub.shared_files
        assert {c.auth for c in stub.calls if c.method != "upload"} == {"ok"}

        wrong = "xoxb-1234567890-WRONGSECRET-zzz"
        bad = notifiers(wrong, api_url=stub.url, default_channel="#gppy", policy=policy)
        logs_seen.wait_for("slack token rejected: messages are only logged from now on")
        bad.post("LOAO", "never sent")
        assert bad.flush(5) and not bad.enabled
        assert any(c.auth == "invalid" and c.error == "invalid_auth" for c in stub.calls)
        url = stub.url
    down = notifiers(TOKEN, api_url=url, default_channel="#gppy")
    down.post("LOAO", "slack is down")
    logs_seen.wait_for("slack message dropped")
    texts = logs_seen.texts()
    assert any("HTTP 429" in t for t in texts) and any("slackstub" in t for t in texts)
    assert any("Sending a request" in t for t in texts)  # slack-sdk's debug lines were seen
    for secret in (TOKEN, wrong):
        assert not [t for t in texts if secret in t]
        assert secret not in record.read_text()
        for n in (good, bad, down):
            assert secret not in repr(n) and secret not in str(vars(n))


def test_credentials_file_must_be_private(tmp_path, stub, logs_seen, monkeypatch):
    token_file = tmp_path / "slack-token"
    token_file.write_text(TOKEN + "\n")
    write_settings(f'[slack]\ntoken_file = "{token_file}"\ndefault_channel = "#gppy"\n'
                   f'api_url = "{stub.url}"\n')
    for mode in (0o644, 0o640, 0o604):
        token_file.chmod(mode)
        with pytest.raises(InputError) as err:
            Notifier.from_settings(policy=FAST)
        assert str(token_file) in str(err.value) and f"{mode:04o}" in str(err.value)
        assert "chmod 600" in str(err.value) and TOKEN not in str(err.value)
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)  # the environment wins: the file is not read
    n = Notifier.from_settings(policy=FAST)
    assert n.token_source == "$SLACK_BOT_TOKEN"
    n.close()
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    token_file.chmod(0o600)
    assert read_token_file(token_file).reveal() == TOKEN
    with Notifier.from_settings(policy=FAST) as n:
        assert n.token_source == str(token_file)
        n.post("LOAO", "from the token file")
        assert n.flush(5)
    assert [(c.text, c.auth) for c in stub.messages] == [("from the token file", "ok")]
    (token_file.parent / "empty").write_text("\n")
    (token_file.parent / "empty").chmod(0o600)
    with pytest.raises(InputError, match="alone on one line"):
        read_token_file(token_file.parent / "empty")
    with pytest.raises(InputError, match="does not exist"):
        read_token_file(tmp_path / "nope")


def test_default_token_file_in_the_config_dir(stub, monkeypatch):
    write_settings('[slack]\ndefault_channel = "#gppy"\n')
    default = settings_file().with_name("slack-token")
    default.write_text(TOKEN)
    default.chmod(0o600)
    monkeypatch.setenv("GPPY_SLACK_API_URL", stub.url)
    with Notifier.from_settings(policy=FAST) as n:
        assert n.token_source == str(default) and n.api_url == stub.url
        n.post("LOAO", "default token file")
        assert n.flush(5)
    assert [(c.text, c.auth) for c in stub.messages] == [("default token file", "ok")]


# ------------------------------------------------------------------ settings file

def test_settings_file_values_and_precedence(monkeypatch, tmp_path):
    assert load_settings().slack.channel_for("LOAO") is None  # no file: defaults
    path = write_settings("""
[slack]
api_url = "http://127.0.0.1:8099/api"
token_file = "slack-token"
default_channel = "#gppy"
max_retries = 2
backoff_s = 0.5
[slack.channels]
LOAO = "#loao"
7DT01 = "C0123456789"
""")
    s = load_settings()
    assert s.path == path
    assert s.slack.retry == {"max_retries": 2, "backoff_s": 0.5}
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    n = Notifier.from_settings(s)
    n.close()
    assert (n.policy.max_retries, n.policy.backoff_s, n.policy.message_budget_s) == (2, 0.5, 60.0)
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    assert s.slack.api_url == "http://127.0.0.1:8099/api/"
    assert s.slack.token_file == path.parent / "slack-token"
    assert (s.slack.channel_for("loao"), s.slack.channel_for("7dt01"),
            s.slack.channel_for("KCT")) == ("#loao", "C0123456789", "#gppy")
    from gppy.daemon.slack import resolve_api_url
    assert resolve_api_url(s) == "http://127.0.0.1:8099/api/"
    monkeypatch.setenv("GPPY_SLACK_API_URL", "http://localhost:1/x")
    assert resolve_api_url(s) == "http://localhost:1/x/"
    monkeypatch.setenv("GPPY_SLACK_API_URL", "localhost:1")
    with pytest.raises(InputError, match="GPPY_SLACK_API_URL"):
        resolve_api_url(s)


@pytest.mark.parametrize("text, keys", [
    ('[slack]\nchanels = {}\n', ["slack.chanels: unknown key"]),
    ('[slak]\n', ["slak: unknown key"]),
    ('slack = "#gppy"\n', ["slack: expected a table"]),
    ('[slack]\napi_url = 8099\ndefault_channel = ["#a"]\n',
     ["slack.api_url: expected a string", "slack.default_channel: expected a string"]),
    ('[slack]\napi_url = "slack.com/api"\n', ["slack.api_url: expected an http"]),
    ('[slack.channels]\nLOAO = 3\n', ["slack.channels.LOAO: expected a string"]),
    ('[slack.channels]\nLOAO = "#my channel"\n', ["slack.channels.LOAO: a channel name"]),
    ('[slack.channels]\nLOAO = "#a"\nloao = "#b"\n', ["slack.channels.loao: given twice"]),
    ('[slack]\ndefault_channel = "#a\n', ["not valid TOML"]),
    ('[slack]\nmax_retries = 1.5\nbackoff_s = 0\n',
     ["slack.max_retries: expected a whole number", "slack.backoff_s: expected a positive"]),
])
def test_settings_errors_name_the_file_and_the_key(text, keys):
    path = write_settings(text)
    with pytest.raises(SettingsError) as err:
        load_settings()
    for key in keys:
        assert f"{path}: {key}" in str(err.value)
    with pytest.raises(InputError):
        Notifier.from_settings()


# ------------------------------------------------------------------ the stand-in as a process

def test_stub_runs_as_a_process(tmp_path, notifiers):
    record, url_file = tmp_path / "calls.jsonl", tmp_path / "url"
    env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "gppy.daemon.slackstub", "--port", "0",
                             "--record", str(record), "--url-file", str(url_file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"listening on (\S+)", line).group(1)
        assert url_file.read_text().strip() == url
        order = urllib.request.Request(url.replace("/api/", "/_stub/fail"), method="POST",
                                       data=json.dumps({"count": 1, "status": 500}).encode())
        assert json.load(urllib.request.urlopen(order, timeout=5))["ok"]
        stamp = tmp_path / "stamp.png"
        stamp.write_bytes(b"png bytes")
        n = notifiers(TOKEN, api_url=url, channels={"LOAO": "#loao"})
        n.post("LOAO", "from another process", files=[stamp])
        assert n.flush(10)
        calls = json.load(urllib.request.urlopen(url.replace("/api/", "/_stub/calls"), timeout=5))
        assert [c["method"] for c in calls] == ["chat.postMessage", "chat.postMessage",
                                                "files.getUploadURLExternal", "upload",
                                                "files.completeUploadExternal"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert [(c["method"], c["status"]) for c in lines][:2] == [("chat.postMessage", 500),
                                                               ("chat.postMessage", 200)]
    assert lines[1]["text"] == "from another process" and lines[1]["channel"] == "#loao"
    assert lines[-1]["files"][0]["name"] == "stamp.png" and lines[-1]["files"][0]["size"] == 9
    assert TOKEN not in record.read_text() + err
