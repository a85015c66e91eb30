"""Build (and validate) the extension zip with Blender's own extension tool.

Uses ``blender_ext.py`` shipped inside the ``bpy`` wheel, the same code as
``blender --command extension build``, so the manifest is checked by
Blender's rules. Usage: ``python tools/build_extension.py [OUT_DIR]``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def blender_ext_script() -> Path:
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the bpy package is not installed: run `make setup`")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise SystemExit(f"blender_ext.py not found under {root}")
    return found[-1]


def build(out_dir: Path) -> Path:
    """Build ``<id>-<version>.zip`` into ``out_dir``, validate it, return its path."""
    manifest = tomllib.loads((REPO / "blender_manifest.toml").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    script = str(blender_ext_script())
    for args in (["build", "--source-dir", str(REPO), "--output-filepath", str(out)],
                 ["validate", str(out)]):
        result = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"extension {args[0]} failed:\n{result.stdout}{result.stderr}")
    return out


if __name__ == "__main__":
    path = build(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist")
    print(path)
