"""Where gpPy reads its configuration and writes everything else.

Every writable location derives from one data directory: ``--data-dir``, else
``$GPPY_DATA_DIR``, else ``~/.gppy``. User configuration (extra or overriding
observatory profiles) lives in ``$GPPY_CONFIG_DIR``, else ``~/.config/gppy``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def config_dir() -> Path:
    env = os.environ.get("GPPY_CONFIG_DIR")
    return Path(env).expanduser() if env else Path.home() / ".config" / "gppy"


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
