"""The manifest's blender_version_min is a promise: install + segment in Blender 4.2.

The bpy 4.2.0 wheel lives in its own environment (``.venv-blender42``, made by
``make setup``); the worker runs on this environment's Python, as it would on a
user's separate torch environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO

pytestmark = [pytest.mark.blender, pytest.mark.slow]

OLDEST_PYTHON = REPO / ".venv-blender42" / "bin" / "python"


def test_manifest_minimum_is_the_tested_blender() -> None:
    manifest = tomllib.loads((REPO / "blender_manifest.toml").read_text())
    assert manifest["blender_version_min"] == "4.2.0"
    makefile = (REPO / "Makefile").read_text()
    assert "bpy==4.2.0" in makefile


def test_install_and_segment_in_blender_4_2(extension_zip, closenet_reference, tmp_path) -> None:
    if not OLDEST_PYTHON.exists():
        pytest.fail(f"{OLDEST_PYTHON} is missing: run `make setup`")
    from inference.synth import generate_scan, write_scan

    scan = generate_scan(11, n_points=6000)
    write_scan(tmp_path, "scan", scan, mesh_format="ply")
    result = subprocess.run(
        [str(OLDEST_PYTHON), str(REPO / "tests" / "blender_oldest_smoke.py"), str(extension_zip),
         str(tmp_path / "scan.ply"), str(closenet_reference / "closenet.pth"), sys.executable],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["blender"].startswith("4.2")
    assert out["vertices"] == 6000
    from close_blender.labels import CLASS_NAMES

    expected = {f"CloSe_{CLASS_NAMES[int(k)]}": c for k, c in out["label_counts"].items()}
    assert out["groups"] == expected
