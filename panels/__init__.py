"""The "CloSe" tab in the 3D viewport sidebar, its scene state, and the preferences."""

from __future__ import annotations

import bpy

from . import corrections, editing, handoff, preferences, properties, sidebar

property_classes: tuple[type, ...] = (*properties.classes,)
classes: tuple[type, ...] = (*preferences.classes, *sidebar.classes, *editing.classes,
                             *handoff.classes, *corrections.classes)


def register_properties() -> None:
    bpy.types.Scene.close_blender = bpy.props.PointerProperty(type=properties.CloseSceneSettings)
    bpy.types.Object.close_blender = bpy.props.PointerProperty(type=properties.CloseObjectResult)


def unregister_properties() -> None:
    del bpy.types.Object.close_blender
    del bpy.types.Scene.close_blender
