"""The core imports without bpy and without torch, and the CLI lists its commands."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

CORE_MODULES = ("close_blender", "close_blender.labels", "close_blender.scan_io",
                "close_blender.cli", "close_blender.fileio", "close_blender.errors")


def test_core_imports_without_bpy_or_torch() -> None:
    code = (
        "import sys, importlib, pkgutil\n"
        "import close_blender, close_blender.commands\n"
        f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
        "for info in pkgutil.iter_modules(close_blender.__path__):\n"
        "    if info.name != '__main__': importlib.import_module('close_blender.' + info.name)\n"
        "for info in pkgutil.iter_modules(close_blender.commands.__path__):\n"
        "    importlib.import_module('close_blender.commands.' + info.name)\n"
        "bad = [m for m in ('bpy', 'torch', 'anny', 'trimesh', 'scipy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_cli_help_lists_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "close_blender", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "info" in out
    out = subprocess.run([sys.executable, "-m", "close_blender", "info", "--json"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert '"TShirt"' in out


def test_console_entry_point_matches_module() -> None:
    exe = REPO / ".venv" / "bin" / "close-blender"
    if not exe.exists():  # the README's setup installs it; a bare checkout may not have it
        import shutil

        found = shutil.which("close-blender")
        assert found, "close-blender is not installed: run `make setup`"
        exe = found
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "info" in out
