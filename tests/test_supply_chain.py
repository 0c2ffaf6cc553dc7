"""CI's supply-chain check refuses a nats-server older than the CVE fix, accepts ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from natsmesh.ops._binary import find_nats_server

CHECK = Path(__file__).parent.parent / ".ci" / "check-versions"


def _check(binary: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), binary], capture_output=True, text=True, timeout=30
    )


def test_the_installed_nats_server_and_nats_py_pass() -> None:
    done = _check(find_nats_server())
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


@pytest.mark.parametrize("reported", ["nats-server: v2.12.5", "nats-server: v2.9.25", "v1.4.1"])
def test_an_older_nats_server_fails_the_build(tmp_path: Path, reported: str) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text(f'#!/bin/sh\necho "{reported}"\n')
    fake.chmod(0o755)
    done = _check(str(fake))
    assert done.returncode != 0
    assert "CVE-2026-33248" in done.stderr
