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
    # What a running job is doing: on the window manager, so it is never saved in a .blend.
    bpy.types.WindowManager.close_blender_status = bpy.props.StringProperty(
        name="CloSe Status", description="What the worker is doing", default="",
        options={"SKIP_SAVE"})


def unregister_properties() -> None:
    del bpy.types.WindowManager.close_blender_status
    del bpy.types.Object.close_blender
    del bpy.types.Scene.close_blender
