"""The systemd unit template is accepted by `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import GPPY, REPO

UNIT = REPO / "systemd" / "gpwatch@.service"


def _verify(text: str, folder: Path) -> subprocess.CompletedProcess:
    unit = folder / "gpwatch@loao.service"
    unit.write_text(text)
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)


@pytest.fixture
def installed_unit_text() -> str:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # the template points at /opt/gppy; verify against this checkout's real gpwatch
    return UNIT.read_text().replace("/opt/gppy/.venv/bin/gpwatch", str(GPPY.with_name("gpwatch")))


def test_unit_template_verifies(installed_unit_text, tmp_path):
    run = _verify(installed_unit_text, tmp_path)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    for required in ("ExecStart=", "%i ${GPWATCH_NCORES}", "EnvironmentFile=-/etc/gppy/gpwatch-%i.env",
                     "Restart=on-failure", "User=gppy", "NoNewPrivileges=yes",
                     "ProtectSystem=strict", "ReadWritePaths="):
        assert required in installed_unit_text


def test_verify_rejects_a_broken_unit(installed_unit_text, tmp_path):
    broken = installed_unit_text.replace(str(GPPY.with_name("gpwatch")), "gpwatch-relative")
    assert _verify(broken, tmp_path).returncode != 0
