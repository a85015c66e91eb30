"""A stand-in for ``bpy.types.UILayout`` so panels' ``draw()`` runs without a window.

Headless Blender draws no UI, so a typo in a panel (an unknown layout method,
a property or operator that does not exist, a wrong icon name, a keyword the
running Blender does not know) would only show up for a user. ``FakeLayout``
records every call and checks it against the running Blender's own RNA
description of ``UILayout``, of the data given to ``prop`` and of the
operators named, raising what real Blender would raise (or worse).

Also a script for an older Blender's Python (``.venv-blender42``): install the
extension zip and draw every panel there, printing one JSON line::

    python tests/fake_layout.py EXTENSION.zip
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

ADDON = "bl_ext.user_default.close_blender"
# Methods returning a sub-layout; every other method returns nothing (operators: their
# properties).
SUB_LAYOUTS = {"row", "column", "box", "split", "grid_flow", "column_flow", "menu_pie"}


def _rna_function(name: str):
    import bpy

    return bpy.types.UILayout.bl_rna.functions.get(name)


def _icons() -> set[str]:
    import bpy

    return set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())


def operator_rna(idname: str):
    """The RNA type of a registered operator (``module.name``); raises when there is none."""
    import bpy

    module, _, name = idname.partition(".")
    if not module or not name:
        raise ValueError(f"operator id {idname!r} is not 'module.name'")
    try:
        return getattr(getattr(bpy.ops, module), name).get_rna_type()
    except (AttributeError, KeyError) as exc:
        raise AssertionError(f"the panel draws an unregistered operator {idname!r}") from exc


class FakeOperatorProperties:
    """What ``layout.operator()`` returns: setting a property checks the operator has it."""

    def __init__(self, idname: str, rna) -> None:
        object.__setattr__(self, "_idname", idname)
        object.__setattr__(self, "_rna", rna)
        object.__setattr__(self, "values", {})

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._rna.properties:
            raise AttributeError(f"operator {self._idname} has no property {name!r}")
        self.values[name] = value

    def __getattr__(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in self._rna.properties:
            return self._rna.properties[name].default
        raise AttributeError(f"operator {self._idname} has no property {name!r}")


class FakeLayout:
    """Records calls as ``(method, arguments)`` in ``calls`` (shared with sub-layouts)."""

    def __init__(self, calls: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        object.__setattr__(self, "calls", [] if calls is None else calls)
        object.__setattr__(self, "settings", {})

    # -- what tests read back ---------------------------------------------------------
    def labels(self) -> list[str]:
        return [str(kw.get("text", "")) for name, kw in self.calls if name == "label"]

    def operators(self) -> list[str]:
        return [kw["operator"] for name, kw in self.calls
                if name in ("operator", "operator_menu_enum", "operator_enum")]

    def props(self) -> list[str]:
        return [kw["property"] for name, kw in self.calls if name.startswith("prop")]

    # -- UILayout ---------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        import bpy

        if name not in bpy.types.UILayout.bl_rna.properties:
            raise AttributeError(f"UILayout has no attribute {name!r}")
        self.settings[name] = value

    def __getattr__(self, name: str):
        if name in self.settings:
            return self.settings[name]
        function = _rna_function(name)
        if function is None:
            raise AttributeError(f"UILayout has no method {name!r}")
        params = [p.identifier for p in function.parameters if not p.is_output]

        def call(*args: Any, **kwargs: Any):
            if len(args) > len(params):
                raise TypeError(f"UILayout.{name}() takes at most {len(params)} arguments")
            bound = dict(zip(params, args, strict=False))
            for key, value in kwargs.items():
                if key not in params:
                    raise TypeError(f"UILayout.{name}() got an unknown keyword {key!r}")
                if key in bound:
                    raise TypeError(f"UILayout.{name}() got {key!r} twice")
                bound[key] = value
            self._check(name, function, bound)
            self.calls.append((name, bound))
            if name in SUB_LAYOUTS:
                return FakeLayout(self.calls)
            if name == "operator":
                return FakeOperatorProperties(bound["operator"], operator_rna(bound["operator"]))
            return None

        return call

    @staticmethod
    def _check(name: str, function, bound: dict[str, Any]) -> None:
        for p in function.parameters:
            if p.is_required and not p.is_output and p.identifier not in bound:
                raise TypeError(f"UILayout.{name}() needs {p.identifier!r}")
        icon = bound.get("icon")
        if icon is not None and icon not in _icons():
            raise TypeError(f"UILayout.{name}(): unknown icon {icon!r}")
        for key in ("text", "placeholder", "heading"):
            if key in bound and not isinstance(bound[key], str):
                raise TypeError(f"UILayout.{name}(): {key} must be a str, not "
                                f"{type(bound[key]).__name__}")
        if "data" in bound and "property" in bound:
            data, prop = bound["data"], bound["property"]
            rna = getattr(data, "bl_rna", None)
            if rna is None or prop not in rna.properties:
                raise AttributeError(f"UILayout.{name}(): {type(data).__name__} has no "
                                     f"property {prop!r}")
            if "index" in bound and bound["index"] >= max(rna.properties[prop].array_length, 0):
                raise IndexError(f"UILayout.{name}(): {prop!r} has no index {bound['index']}")
        if "operator" in bound:
            rna = operator_rna(bound["operator"])
            if "property" in bound and bound["property"] not in rna.properties:
                raise AttributeError(f"operator {bound['operator']} has no property "
                                     f"{bound['property']!r}")


class _Owner:
    """``self`` for a draw(): the real panel or preferences, with a fake ``layout``."""

    def __init__(self, real: Any, layout: FakeLayout) -> None:
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "layout", layout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def draw_panel(panel: type, context, owner: Any = None) -> FakeLayout | None:
    """Draw ``panel`` (a Panel or AddonPreferences class) into a FakeLayout; None when its
    poll says it would not be drawn. ``owner``: the real ``self`` (the preferences)."""
    poll = getattr(panel, "poll", None)
    if poll is not None and not poll(context):
        return None
    layout = FakeLayout()
    panel.draw(_Owner(owner, layout) if owner is not None else _Owner(panel, layout), context)
    return layout


def panel_classes(ext) -> list[type]:
    """Every panel and the preferences class the extension registers."""
    import bpy

    return [c for c in ext.classes
            if issubclass(c, (bpy.types.Panel, bpy.types.AddonPreferences))]


def draw_all(ext, context) -> dict[str, FakeLayout | None]:
    """Draw every panel (and the preferences) of the extension once."""
    import bpy

    prefs = context.preferences.addons[ADDON].preferences
    out = {}
    for cls in panel_classes(ext):
        owner = prefs if issubclass(cls, bpy.types.AddonPreferences) else None
        out[cls.__name__] = draw_panel(cls, context, owner)
    return out


def _main(zip_path: str) -> int:
    """Install the zip into this Blender and draw every panel in a few states."""
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="close-panels-")
    import bpy

    assert bpy.ops.extensions.package_install_files(
        filepath=zip_path, repo="user_default", enable_on_install=True) == {"FINISHED"}
    ext = sys.modules[ADDON]
    context = bpy.context
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    drawn: dict[str, int] = {}

    def draw_once() -> None:
        for name, layout in draw_all(ext, context).items():
            if layout is not None:
                drawn[name] = drawn.get(name, 0) + len(layout.calls)

    draw_once()  # nothing selected
    bpy.ops.mesh.primitive_cube_add()
    obj = context.active_object
    import numpy as np

    ext.operators.mesh_labels.write_labels(obj, np.arange(len(obj.data.vertices)) % 3)
    ext.operators.mesh_labels.write_stats(obj, np.arange(len(obj.data.vertices)) % 3)
    obj.close_blender.body_fit = "body fit ok"
    prefs = context.preferences.addons[ADDON].preferences
    prefs.python_source = "CUSTOM"
    prefs.last_check = "Python 3\ntorch missing"
    context.window_manager.close_blender_status = "CloSe: working"
    draw_once()  # a labelled mesh, custom Python, a status
    print(json.dumps({"blender": bpy.app.version_string, "drawn": drawn,
                      "panels": [c.__name__ for c in panel_classes(ext)]}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
