"""Slack notifications, sent from a background thread so that Slack never stops or
slows the pipeline.

    notifier = Notifier.from_settings()          # once, at daemon start (may raise InputError)
    notifier.post("LOAO", "night 2024-02-29 done", files=[stamp_png])   # never blocks or raises
    notifier.close(timeout_s=10)                 # at shutdown: drain within a bound

Where each value comes from (first found wins):

- token: ``$SLACK_BOT_TOKEN``; else ``[slack] token_file`` of ``<config dir>/settings.toml``;
  else ``<config dir>/slack-token`` if it exists; else none: messages are only logged (at
  info, after one warning). A token file must be readable by its owner only (0600 or 0400);
  any other mode is refused with an InputError naming the file and its mode.
- API base URL: ``$GPPY_SLACK_API_URL``; else ``[slack] api_url``; else https://slack.com/api/.
- channel of an observatory: ``[slack.channels] OBS`` (any case); else
  ``[slack] default_channel``; else none: that observatory's messages are only logged.

A message is the text (chat.postMessage, which takes a channel name or ID), then its files
if any (files_upload_v2 into the channel ID Slack answered, as one more message below).
Each HTTP request is retried by slack-sdk's retry handlers on 429 (after Retry-After), on
5xx and on connection errors, with exponential back-off (RetryPolicy); no retry waits or
starts past the message's time budget, and a message that still fails is dropped with one
warning saying what and why. The token never reaches a log line, an exception or a repr.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import random
import stat
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import (BackoffRetryIntervalCalculator, ConnectionErrorRetryHandler,
                                  HttpRequest, HttpResponse, Jitter,
                                  RateLimitErrorRetryHandler, RetryState)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler

from gppy import logs
from gppy.errors import InputError
from gppy.settings import Settings, config_dir, load_settings

SLACK_API_URL = "https://slack.com/api/"
TOKEN_ENV = "SLACK_BOT_TOKEN"
API_URL_ENV = "GPPY_SLACK_API_URL"
TOKEN_FILE_NAME = "slack-token"
MAX_FILE_BYTES = 64 * 2**20   # a file larger than this is not uploaded (a stamp is ~100 kB)
MAX_TEXT_CHARS = 39_000       # Slack truncates text beyond 40,000 characters
AUTH_ERRORS = {"not_authed", "invalid_auth", "account_inactive", "token_revoked",
               "token_expired", "no_permission", "missing_scope", "not_allowed_token_type"}
SDK_LOGGER = "gppy.slack.sdk"
HINTS = {"channel_not_found": "check the channel in settings.toml; a private channel needs "
                              "the bot invited",
         "not_in_channel": "invite the bot to the channel (/invite @bot)"}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one message is tried, and how much may wait in the queue.

    Each HTTP request: at most 1 + `max_retries` attempts; waits of `backoff_s` doubled at
    each retry (1, 2, 4, 8 s), plus up to 25 % jitter, at most `max_backoff_s`; on 429 the
    wait is Slack's Retry-After. No wait that would end later than `message_budget_s`
    after the message was taken up is begun: the message is dropped instead. A request
    gives up after `request_timeout_s` without an answer (connect or read), so one message
    takes at most about message_budget_s + request_timeout_s.
    """

    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    message_budget_s: float = 60.0
    request_timeout_s: float = 10.0
    queue_size: int = 100           # messages waiting; beyond, post() drops (and logs) at once
    check_auth: bool = True         # auth.test once when the thread starts


class Secret:
    """A token that shows as *** in every repr and str."""

    __slots__ = ("_value", "__weakref__")

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a Secret is not pickled")


def escape(text: str) -> str:
    """`text` with the three characters Slack's mrkdwn treats as control escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------- where the values come from

def read_token_file(path: str | os.PathLike) -> Secret:
    """The token in `path`, which only its owner may read; InputError otherwise."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise InputError(f"{path}: the Slack token file does not exist") from None
    except OSError as exc:
        raise InputError(f"{path}: the Slack token file cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: the Slack token file is not a regular file")
        if mode & 0o077:
            raise InputError(f"{path}: the Slack token file has mode {mode:04o}, so other users "
                             f"can read it; allow only its owner: chmod 600 {path}")
        raw = fh.read(4096)
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        token = ""
    if not token or any(c.isspace() for c in token):
        raise InputError(f"{path}: expected the Slack bot token (xoxb-...) alone on one line")
    return Secret(token)


def resolve_token(settings: Settings) -> tuple[Secret | None, str]:
    """(token, where it came from) by the precedence in the module docstring."""
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        if any(c.isspace() for c in env):
            raise InputError(f"${TOKEN_ENV}: expected one token without spaces")
        return Secret(env), f"${TOKEN_ENV}"
    path = settings.slack.token_file
    if path is None and (config_dir() / TOKEN_FILE_NAME).exists():
        path = config_dir() / TOKEN_FILE_NAME
    if path is None:
        return None, "none"
    return read_token_file(path), str(path)


def resolve_api_url(settings: Settings) -> str:
    env = os.environ.get(API_URL_ENV, "").strip()
    url = env or settings.slack.api_url or SLACK_API_URL
    if not url.startswith(("http://", "https://")):
        raise InputError(f"${API_URL_ENV}: expected an http:// or https:// URL, got {url!r}")
    return url if url.endswith("/") else url + "/"


# ---------------------------------------------------------------- retries

class _Aborted(Exception):
    """Raised out of a retry wait when close() ran out of time."""


class _Budget:
    """The time budget of the message being sent, shared by the retry handlers (one
    worker thread sends one message at a time), and the switch that ends every wait."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.abort = threading.Event()
        self.begin()

    def begin(self) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + self.seconds
        self.retries, self.refused = 0, ""

    def allow(self, delay: float) -> bool:
        if self.abort.is_set():
            self.refused = "shutting down"
            return False
        if time.monotonic() + delay > self.deadline:
            self.refused = (f"waiting {delay:.1f} s more would pass the message's "
                            f"{self.seconds:g} s budget")
            return False
        return True

    def wait(self, delay: float) -> None:
        if self.abort.wait(delay):
            raise _Aborted()
        self.retries += 1


class _ProportionalJitter(Jitter):
    def recalculate(self, duration: float) -> float:
        return duration * (1 + 0.25 * random.random())


class _Bounded:
    """Mixin for slack-sdk's retry handlers: the wait goes through the budget (refused
    past the deadline, cut short by close()) and is logged at debug."""

    def __init__(self, budget: _Budget, log, max_backoff_s: float, **kwargs):
        super().__init__(**kwargs)
        self.budget, self.log, self.max_backoff_s = budget, log, max_backoff_s

    def _delay(self, state: RetryState, response: HttpResponse | None) -> float:
        return min(self.interval_calculator.calculate_sleep_duration(state.current_attempt),
                   self.max_backoff_s)

    def can_retry(self, *, state, request, response=None, error=None) -> bool:
        if not super().can_retry(state=state, request=request, response=response, error=error):
            return False
        delay = self._delay(state, response)
        if not self.budget.allow(delay):
            return False
        state.custom_values = {**(state.custom_values or {}), "delay": delay}
        return True

    def prepare_for_next_attempt(self, *, state, request, response=None, error=None) -> None:
        delay = state.custom_values.pop("delay")
        path = urlsplit(request.url).path
        reason = (f"HTTP {response.status_code}" if response is not None
                  else _why_error(error))
        self.log.debug("slack retry", request=path.rsplit("/api/", 1)[-1], reason=reason,
                       attempt=state.current_attempt + 2, wait_s=round(delay, 2))
        state.next_attempt_requested = True
        self.budget.wait(delay)
        state.increment_current_attempt()


class _RateLimitRetry(_Bounded, RateLimitErrorRetryHandler):
    def _delay(self, state, response) -> float:
        values = {k.lower(): v for k, v in response.headers.items()}.get("retry-after") or ["1"]
        try:
            seconds = float(values[0] if isinstance(values, list) else values)
        except ValueError:
            seconds = 1.0
        return max(seconds, 0.0) * (1 + 0.1 * random.random())  # Slack's wait, never shortened


class _ServerErrorRetry(_Bounded, ServerErrorRetryHandler):
    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        return response is not None and 500 <= response.status_code <= 599


class _ConnectionRetry(_Bounded, ConnectionErrorRetryHandler):
    pass


class _Client(WebClient):
    """WebClient whose raw upload (the POST to the URL files.getUploadURLExternal handed
    out, which slack-sdk does not retry) goes through the same retry handlers."""

    def _upload_file(self, **kwargs):
        state = RetryState()
        request = HttpRequest(method="POST", url=kwargs.get("url", ""), headers={})
        while True:
            result = error = response = None
            try:
                result = super()._upload_file(**kwargs)
            except HTTPError as exc:
                error = exc
                response = HttpResponse(status_code=exc.code,
                                        headers={k: [v] for k, v in exc.headers.items()})
            except Exception as exc:
                error = exc
            else:
                if result.status == 200:
                    return result
                response = HttpResponse(status_code=result.status, headers={})
            state.next_attempt_requested = False
            for handler in self.retry_handlers:
                if handler.can_retry(state=state, request=request, response=response, error=error):
                    handler.prepare_for_next_attempt(state=state, request=request,
                                                     response=response, error=error)
                    break
            if not state.next_attempt_requested:
                if error is not None:
                    raise error
                return result


# ---------------------------------------------------------------- the notifier

@dataclass
class _Message:
    seq: int
    obs: str
    channel: str
    text: str
    files: list[Path] = field(default_factory=list)


_STOP = object()


class _SdkLogFilter(logging.Filter):
    """On slack-sdk's logger: drop its per-attempt 'Failed to send' errors (the notifier
    logs retries and drops itself) and redact every token known to this process."""

    secrets: "weakref.WeakSet[Secret]"

    def __init__(self):
        super().__init__()
        self.secrets = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Failed to send a request to Slack API server"):
            return False
        for secret in list(self.secrets):
            message = secret.redact(message)
        record.msg, record.args = message, ()
        return True


_sdk_filter = _SdkLogFilter()
_live: "weakref.WeakSet[Notifier]" = weakref.WeakSet()


def _sdk_logger() -> logging.Logger:
    logger = logging.getLogger(SDK_LOGGER)
    if _sdk_filter not in logger.filters:
        logger.addFilter(_sdk_filter)
        if logger.level == logging.NOTSET:  # its debug lines hold whole responses
            logger.setLevel(logging.WARNING)
    return logger


@atexit.register
def _close_all() -> None:
    for notifier in list(_live):
        notifier.close(timeout_s=5.0)


class Notifier:
    """Posts messages to each observatory's Slack channel from a background thread."""

    def __init__(self, token: str | Secret | None, *, api_url: str = SLACK_API_URL,
                 channels: Mapping[str, str] | None = None, default_channel: str | None = None,
                 policy: RetryPolicy | None = None, token_source: str = "given"):
        """`token` None: log-only. `channels`: observatory (any case) -> channel name or ID."""
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.channels = {k.casefold(): v for k, v in (channels or {}).items()}
        self.default_channel = default_channel
        self.policy = policy or RetryPolicy()
        self.token_source = token_source
        self._log = logs.get("gppy.slack")
        self._secret = (token if isinstance(token, Secret) or token is None
                        else Secret(str(token).strip()) if str(token).strip() else None)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting = 0          # queued, not yet taken up
        self._busy: _Message | None = None
        self._closed = False
        self._off_reason = "" if self._secret else "no token"
        self._warned_obs: set[str] = set()
        self._seq = itertools.count(1)
        self._budget = _Budget(self.policy.message_budget_s)
        self._thread: threading.Thread | None = None
        if self._secret is None:
            self._log.warning("slack disabled: no token; messages are only logged",
                              how=f"set ${TOKEN_ENV}, or put the bot token in "
                                  f"{config_dir() / TOKEN_FILE_NAME} with mode 0600")
            return
        _sdk_filter.secrets.add(self._secret)
        p = self.policy
        kw = dict(budget=self._budget, log=self._log, max_backoff_s=p.max_backoff_s,
                  max_retry_count=p.max_retries)
        backoff = BackoffRetryIntervalCalculator(backoff_factor=p.backoff_s,
                                                 jitter=_ProportionalJitter())
        self._client = _Client(
            token=self._secret.reveal(), base_url=self.api_url, timeout=p.request_timeout_s,
            logger=_sdk_logger(),
            retry_handlers=[_RateLimitRetry(**kw), _ServerErrorRetry(interval_calculator=backoff, **kw),
                            _ConnectionRetry(interval_calculator=backoff, **kw)])
        self._thread = threading.Thread(target=self._run, name="gppy-slack", daemon=True)
        self._thread.start()
        _live.add(self)

    @classmethod
    def from_settings(cls, settings: Settings | None = None,
                      policy: RetryPolicy | None = None) -> "Notifier":
        """From settings.toml and the environment (see the module docstring). Raises
        InputError (SettingsError) for an invalid settings file or token file."""
        settings = settings if settings is not None else load_settings()
        token, source = resolve_token(settings)
        return cls(token, api_url=resolve_api_url(settings), channels=settings.slack.channels,
                   default_channel=settings.slack.default_channel,
                   policy=policy or RetryPolicy(**settings.slack.retry), token_source=source)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"off ({self._off_reason})" if self._off_reason else "on"
        return (f"Notifier({state}, api_url={self.api_url!r}, token from {self.token_source}, "
                f"channels={self.channels!r}, default_channel={self.default_channel!r})")

    @property
    def enabled(self) -> bool:
        """True while messages go to Slack (a token, not rejected, not closed)."""
        return not self._off_reason and not self._closed

    def channel_for(self, obs: str) -> str | None:
        return self.channels.get(obs.casefold(), self.default_channel)

    # -- posting

    def post(self, obs: str, text: str, files: Iterable[str | os.PathLike] = ()) -> bool:
        """Queue `text` (and `files`) for `obs`'s channel. Never blocks, never raises.
        True if queued for Slack; False if only logged or dropped (both logged)."""
        try:
            if isinstance(files, (str, os.PathLike)):
                files = [files]
            files = [Path(f) for f in files]
            text = str(text)
            if len(text) > MAX_TEXT_CHARS:
                text = text[:MAX_TEXT_CHARS] + " …(cut)"
            if self._off_reason:
                self._log_only(obs, text, files, self._off_reason)
                return False
            channel = self.channel_for(obs)
            if channel is None:
                if obs.casefold() not in self._warned_obs:
                    self._warned_obs.add(obs.casefold())
                    self._log.warning("slack: no channel for this observatory; its messages "
                                      "are only logged", obs=obs,
                                      how="set [slack.channels] or default_channel in settings.toml")
                self._log_only(obs, text, files, "no channel")
                return False
            message = _Message(next(self._seq), obs, channel, text, files)
            with self._lock:
                if self._closed:
                    why = "the notifier is closed"
                elif self._waiting >= self.policy.queue_size:
                    why = f"the queue is full ({self.policy.queue_size} messages waiting)"
                else:
                    self._waiting += 1
                    self._queue.put(message)
                    return True
            self._dropped(message, why)
            return False
        except Exception:  # a bug here must not stop the pipeline
            self._log.error("slack: post failed", obs=obs, error=self._redact(traceback.format_exc()))
            return False

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued message was sent or dropped; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._waiting == 0 and self._busy is None,
                                       timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued, within `timeout_s`: for the last min(1 s, 20 %) of it the
        retry waits are cut short and what is left is dropped (logged). Returns within
        `timeout_s` even if a request is still in flight (that one is abandoned)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is None:
                return
            self._queue.put(_STOP)
        _live.discard(self)
        self._thread.join(max(0.0, deadline - min(1.0, 0.2 * timeout_s) - time.monotonic()))
        if self._thread.is_alive():
            self._budget.abort.set()
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():  # stuck in one request (at most request_timeout_s)
            self._drain("shutting down")
            busy = self._busy
            if busy is not None:
                self._log.warning("slack message abandoned at shutdown (request in flight)",
                                  obs=busy.obs, channel=busy.channel, text=_short(busy.text))

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- logging

    def _redact(self, text: str) -> str:
        return self._secret.redact(text) if self._secret is not None else text

    def _log_only(self, obs: str, text: str, files: list[Path], why: str) -> None:
        self._log.info("notification", obs=obs, text=text, files=[str(f) for f in files],
                       slack=f"not sent: {why}")

    def _dropped(self, message: _Message, why: str, what: str = "message") -> None:
        self._log.warning(f"slack {what} dropped", obs=message.obs, channel=message.channel,
                          text=_short(message.text), files=[f.name for f in message.files],
                          reason=self._redact(why))

    def _why(self, exc: Exception) -> str:
        b = self._budget
        if isinstance(exc, _Aborted):
            return "shutting down"
        why = _why_error(exc, self.policy.request_timeout_s)
        tries = f"after {b.retries + 1} attempt{'s' if b.retries else ''} in " \
                f"{time.monotonic() - b.started:.1f} s"
        return self._redact(f"{why} ({tries}{'; ' + b.refused if b.refused else ''})")

    # -- the worker thread

    def _run(self) -> None:
        if self.policy.check_auth:
            try:
                self._check_auth()
            except Exception:
                self._log.error("slack: auth.test failed", error=self._redact(traceback.format_exc()))
        while True:
            message = self._queue.get()
            if message is _STOP:
                return
            with self._lock:
                self._waiting -= 1
                self._busy = message
            try:
                if self._budget.abort.is_set():
                    self._dropped(message, "shutting down")
                elif self._off_reason:
                    self._log_only(message.obs, message.text, message.files, self._off_reason)
                else:
                    self._deliver(message)
            except Exception:
                self._log.error("slack: unexpected error", obs=message.obs,
                                error=self._redact(traceback.format_exc()))
            finally:
                with self._idle:
                    self._busy = None
                    self._idle.notify_all()

    def _drain(self, why: str) -> None:
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                return
            if message is not _STOP:
                with self._lock:
                    self._waiting -= 1
                self._dropped(message, why)

    def _check_auth(self) -> None:
        self._budget.begin()
        try:
            answer = self._client.auth_test()
        except SlackApiError as exc:
            if _api_error(exc) in AUTH_ERRORS:
                self._reject(_api_error(exc))
            else:
                self._log.warning("slack: auth.test failed", reason=self._why(exc))
        except Exception as exc:
            self._log.warning("slack: not reachable yet", api_url=self.api_url,
                              reason=self._why(exc))
        else:
            self._log.info("slack ready", api_url=self.api_url, team=answer.get("team"),
                           bot=answer.get("user"), token_from=self.token_source)

    def _reject(self, error: str) -> None:
        self._off_reason = f"token rejected ({error})"
        self._log.error("slack token rejected: messages are only logged from now on",
                        error=error, token_from=self.token_source)

    def _deliver(self, message: _Message) -> None:
        self._budget.begin()
        try:
            answer = self._client.chat_postMessage(channel=message.channel, text=message.text,
                                                   unfurl_links=False, unfurl_media=False)
        except Exception as exc:
            if isinstance(exc, SlackApiError) and _api_error(exc) in AUTH_ERRORS:
                self._reject(_api_error(exc))
            self._dropped(message, self._why(exc))
            return
        channel_id = answer.get("channel") or message.channel
        self._log.debug("slack message sent", obs=message.obs, channel=message.channel,
                        text=_short(message.text), retries=self._budget.retries)
        if message.files:
            self._upload(message, channel_id)

    def _upload(self, message: _Message, channel_id: str) -> None:
        uploads, unreadable = [], []
        for path in message.files:
            try:
                size = path.stat().st_size
                if size > MAX_FILE_BYTES:
                    unreadable.append(f"{path}: {size} bytes, more than {MAX_FILE_BYTES}")
                    continue
                uploads.append({"file": path.read_bytes(), "filename": path.name,
                                "title": path.name})
            except OSError as exc:
                unreadable.append(f"{path}: {exc.strerror}")
        if unreadable:
            self._log.warning("slack files not sent", obs=message.obs, files=unreadable)
        if not uploads:
            return
        if self._budget.abort.is_set():
            self._dropped(message, "shutting down", what="files")
            return
        try:
            self._client.files_upload_v2(channel=channel_id, file_uploads=uploads)
        except Exception as exc:
            self._dropped(message, self._why(exc), what="files")
        else:
            self._log.debug("slack files sent", obs=message.obs, channel=message.channel,
                            files=[u["filename"] for u in uploads])


def _api_error(exc: SlackApiError) -> str:
    data = getattr(exc.response, "data", None)
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def _why_error(exc: BaseException | None, timeout_s: float | None = None) -> str:
    if isinstance(exc, SlackApiError):
        status, error = getattr(exc.response, "status_code", "?"), _api_error(exc)
        hint = f"; {HINTS[error]}" if error in HINTS else ""
        if status == 200:
            return f"Slack refused it: {error or 'no error code'}{hint}"
        return f"Slack answered HTTP {status}: {error or 'no error code'}"
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, URLError):
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return f"no answer within {timeout_s:g} s" if timeout_s else "timed out"
        return f"cannot connect: {getattr(reason, 'strerror', None) or reason}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s" if timeout_s else "timed out"
    if isinstance(exc, ConnectionError):
        return f"connection lost: {exc.strerror or type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + " …"
