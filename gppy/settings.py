"""Where gpPy reads its configuration and writes everything else.

Every writable location derives from one data directory: ``--data-dir``, else
``$GPPY_DATA_DIR``, else ``~/.gppy``. User configuration (extra or overriding
observatory profiles) lives in ``$GPPY_CONFIG_DIR``, else ``~/.config/gppy``.

Site settings that are not about one observatory live in ``<config dir>/settings.toml``
(absent = every default). `load_settings()` reads and validates it; the keys are::

    [slack]
    api_url = "https://slack.com/api/"          # Web API base URL; $GPPY_SLACK_API_URL wins
    token_file = "~/.config/gppy/slack-token"   # bot token, mode 0600; $SLACK_BOT_TOKEN wins
    default_channel = "#gppy"                   # for observatories without their own channel
    max_retries = 4                             # a message's tries after the first ...
    backoff_s = 1.0                             # ... waiting this, doubled each time
    message_budget_s = 60                       # at most this long for one message
    [slack.channels]                            # observatory (any case) -> channel name or ID
    LOAO = "#loao"

    [astrometry]
    index_dirs = ["/usr/share/astrometry"]      # astrometry.net index folders, searched in order
    cpulimit_s = 30                             # solve-field --cpulimit for a hinted solve
    timeout_s = 60                              # wall clock for a hinted solve
    blind_cpulimit_s = 120                      # the blind retry
    blind_timeout_s = 180
    refcat = "auto"                             # auto | gaia | tycho2 | a catalogue file
    offline = false                             # never query VizieR or SkyBoT; caches only

Only the file's own values are returned here; gppy.daemon.slack applies the environment
variables and the defaults (precedence: environment > settings file > default).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from gppy.errors import InputError


def config_dir() -> Path:
    env = os.environ.get("GPPY_CONFIG_DIR")
    return Path(env).expanduser() if env else Path.home() / ".config" / "gppy"


def settings_file() -> Path:
    return config_dir() / "settings.toml"


class SettingsError(InputError, ValueError):
    """settings.toml is unreadable or invalid; the message names the file and the key(s)."""


@dataclass(frozen=True)
class SlackSettings:
    """The [slack] table as written in the file (None: not set there)."""

    api_url: str | None = None
    token_file: Path | None = None
    default_channel: str | None = None
    channels: Mapping[str, str] = field(default_factory=dict)  # casefolded observatory -> channel
    retry: Mapping[str, float] = field(default_factory=dict)   # RetryPolicy fields set here

    def channel_for(self, obs: str) -> str | None:
        """The observatory's own channel, else the default channel, else None."""
        return self.channels.get(obs.casefold(), self.default_channel)


RETRY_KEYS = ("max_retries", "backoff_s", "message_budget_s")   # of [slack]: RetryPolicy's
DEFAULT_INDEX_DIRS = (Path("/usr/share/astrometry"),)  # Debian's astrometry-data-* packages


@dataclass(frozen=True)
class AstrometrySettings:
    """The [astrometry] table, with its defaults."""

    index_dirs: tuple[Path, ...] = DEFAULT_INDEX_DIRS
    cpulimit_s: float = 30.0
    timeout_s: float = 60.0
    blind_cpulimit_s: float = 120.0
    blind_timeout_s: float = 180.0
    refcat: str = "auto"          # auto | gaia | tycho2 | path of a catalogue file
    offline: bool = False


@dataclass(frozen=True)
class Settings:
    path: Path | None = None  # the file read (None: there was none)
    slack: SlackSettings = SlackSettings()
    astrometry: AstrometrySettings = AstrometrySettings()


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def _url(value: Any) -> str:
    value = _text(value)
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value if value.endswith("/") else value + "/"


def _channel(value: Any) -> str:
    value = _text(value)
    if any(c.isspace() for c in value):
        raise ValueError(f"a channel name or ID has no spaces, got {value!r}")
    return value


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"expected a positive number, got {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _paths(value: Any) -> tuple[Path, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of folders, got {value!r}")
    return tuple(Path(_text(v)).expanduser() for v in value)


# key -> validator (value -> converted value, ValueError if wrong), or a table of them;
# the key "*" accepts any key (the observatory names under [slack.channels]).
_SCHEMA: dict = {
    "slack": {
        "api_url": _url,
        "token_file": _text,
        "default_channel": _channel,
        "channels": {"*": _channel},
        "max_retries": _count,
        "backoff_s": _positive,
        "message_budget_s": _positive,
    },
    "astrometry": {
        "index_dirs": _paths,
        "cpulimit_s": _positive,
        "timeout_s": _positive,
        "blind_cpulimit_s": _positive,
        "blind_timeout_s": _positive,
        "refcat": _text,
        "offline": _bool,
    },
}


def _check(table: dict, schema: dict, where: str, errors: list[str]) -> dict:
    out = {}
    for key, value in table.items():
        name = f"{where}.{key}" if where else key
        rule: dict | Callable | None = schema.get(key, schema.get("*"))
        if rule is None:
            errors.append(f"{name}: unknown key (known here: {', '.join(schema)})")
        elif isinstance(rule, dict):
            if isinstance(value, dict):
                out[key] = _check(value, rule, name, errors)
            else:
                errors.append(f"{name}: expected a table [{name}], got {type(value).__name__}")
        else:
            try:
                out[key] = rule(value)
            except ValueError as exc:
                errors.append(f"{name}: {exc}")
    return out


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Read and validate `path` (default `settings_file()`); a missing file means defaults.

    Raises SettingsError naming the file and every wrong key at once.
    """
    path = Path(path) if path is not None else settings_file()
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        return Settings()
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot be read ({exc.strerror})") from None
    errors: list[str] = []
    data = _check(raw, _SCHEMA, "", errors)
    slack = data.get("slack", {})
    channels: dict[str, str] = {}
    for obs, channel in slack.get("channels", {}).items():
        if obs.casefold() in channels:
            errors.append(f"slack.channels.{obs}: given twice (observatory names ignore case)")
        channels[obs.casefold()] = channel
    if errors:
        raise SettingsError("\n".join(f"{path}: {e}" for e in errors))
    token_file = None
    if "token_file" in slack:  # relative to the settings file's folder
        token_file = path.parent / Path(slack["token_file"]).expanduser()
    astrometry = data.get("astrometry", {})
    if "refcat" in astrometry and astrometry["refcat"] not in ("auto", "gaia", "tycho2"):
        astrometry["refcat"] = str(path.parent / Path(astrometry["refcat"]).expanduser())
    return Settings(path, SlackSettings(api_url=slack.get("api_url"), token_file=token_file,
                                        default_channel=slack.get("default_channel"),
                                        channels=channels,
                                        retry={k: slack[k] for k in RETRY_KEYS if k in slack}),
                    AstrometrySettings(**astrometry))


@dataclass(frozen=True)
class DataDir:
    """The one data directory and the locations derived from it."""

    root: Path

    @classmethod
    def resolve(cls, cli_value: str | os.PathLike | None = None) -> "DataDir":
        if cli_value:
            root = Path(cli_value)
        elif os.environ.get("GPPY_DATA_DIR"):
            root = Path(os.environ["GPPY_DATA_DIR"])
        else:
            root = Path.home() / ".gppy"
        return cls(root.expanduser().resolve())

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    def masters(self, obs: str, night: str) -> Path:
        return self.root / "masters" / obs / night

    def products(self, obs: str, night: str) -> Path:
        return self.root / "products" / obs / night

    def log_file(self, obs: str, night: str) -> Path:
        return self.root / "logs" / obs / f"{night}.jsonl"

    @property
    def catalog_cache(self) -> Path:
        return self.root / "cache" / "catalogs"

    @property
    def templates(self) -> Path:
        return self.root / "templates"
