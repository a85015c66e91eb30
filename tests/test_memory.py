"""The malloc thresholds the worker and the command line set before torch runs."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from close_blender.memory import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_thresholds_are_set_in_a_fresh_process():
    code = "from close_blender.memory import keep_freed_memory as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": ""}, cwd=str(REPO))
    assert out.stdout.strip() == "True"


def test_the_users_own_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_freed_memory() is False
