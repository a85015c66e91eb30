"""The extension installs from its zip into real Blender, registers, unregisters cleanly."""

from __future__ import annotations

import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import ADDON_MODULE, REPO

pytestmark = pytest.mark.blender


def _registered_names(ext) -> set[str]:
    return {cls.__name__ for cls in ext.classes}


def test_zip_holds_only_what_blender_needs(extension_zip: Path) -> None:
    names = zipfile.ZipFile(extension_zip).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    for forbidden in ("tests/", "benchmarks/", ".ci/", "Makefile", "pyproject.toml", ".venv/",
                      "tools/"):
        assert not any(n.startswith(forbidden) for n in names), forbidden
    assert not any("__pycache__" in n for n in names)


def test_manifest_promises() -> None:
    manifest = tomllib.loads((REPO / "blender_manifest.toml").read_text())
    assert manifest["schema_version"] == "1.0.0"
    assert manifest["id"] == "close_blender"
    assert manifest["type"] == "add-on"
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert "files" in manifest["permissions"]
    # Install Packages downloads (only on request): the extension guidelines require saying so.
    network = manifest["permissions"]["network"]
    assert 0 < len(network) <= 64 and not network.endswith(".")


def test_install_needs_online_access(blender_ext, monkeypatch) -> None:
    """Install Packages is the only thing that goes online: its poll follows Blender's
    Online Access and says why it is greyed out."""
    import types

    import bpy

    module = blender_ext.operators.worker
    op = module.CLOSE_OT_install_packages
    messages: list[str] = []
    fake = type("Op", (), {"poll_message_set": staticmethod(messages.append)})
    assert bpy.app.online_access is False  # tests run offline
    assert op.poll.__func__(fake, bpy.context) is False
    assert "Online Access" in messages[-1]
    with pytest.raises(RuntimeError, match="poll"):
        bpy.ops.close.install_packages()
    monkeypatch.setattr(module, "bpy", types.SimpleNamespace(
        app=types.SimpleNamespace(online_access=True), types=bpy.types))
    assert op.poll.__func__(fake, bpy.context) is True


def test_registers_operators_panels_preferences(blender_ext) -> None:
    import bpy

    for idname in ("worker_check", "worker_stop", "install_packages", "open_data_folder"):
        assert hasattr(bpy.ops.close, idname), idname
        getattr(bpy.ops.close, idname).get_rna_type()  # raises if not registered
    for panel in ("CLOSE_PT_main", "CLOSE_PT_model", "CLOSE_PT_garments"):
        assert hasattr(bpy.types, panel), panel
        assert getattr(bpy.types, panel).bl_category == "CloSe"
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    assert type(prefs).bl_idname == ADDON_MODULE
    for prop in ("python_source", "python_path", "device", "default_checkpoint", "data_folder"):
        assert hasattr(prefs, prop), prop
    assert prefs.default_checkpoint == "default"
    assert hasattr(bpy.context.scene, "close_blender")
    # The default data folder is inside the extension's user folder.
    data = blender_ext.panels.preferences.data_dir(prefs)
    assert "close_blender" in str(data)


def test_blender_never_imports_torch(blender_ext) -> None:
    import sys

    assert "torch" not in sys.modules or not any(
        m.startswith(ADDON_MODULE) and "inference" in m for m in sys.modules)
    assert not any(m.startswith(ADDON_MODULE + ".inference") for m in sys.modules)


def test_disable_unregisters_everything_and_enable_again(blender_ext) -> None:
    import bpy

    names = _registered_names(blender_ext)
    assert names
    bpy.ops.preferences.addon_disable(module=ADDON_MODULE)
    try:
        assert ADDON_MODULE not in bpy.context.preferences.addons
        for name in names:
            assert not hasattr(bpy.types, name), f"{name} stayed registered"
        assert not hasattr(bpy.types.Scene, "close_blender")
        assert not hasattr(bpy.ops.close, "worker_check") or not _op_registered("worker_check")
    finally:
        bpy.ops.preferences.addon_enable(module=ADDON_MODULE)
    assert ADDON_MODULE in bpy.context.preferences.addons
    assert _op_registered("worker_check")
    assert hasattr(bpy.types, "CLOSE_PT_main")


def _op_registered(name: str) -> bool:
    import bpy

    try:
        getattr(bpy.ops.close, name).get_rna_type()
    except (AttributeError, KeyError):
        return False
    return True
