"""Sidebar panels in the 3D viewport, tab "CloSe"."""

from __future__ import annotations

import bpy

from ..close_blender.labels import DISPLAY_NAMES, N_CLASSES
from .preferences import get_prefs


class CLOSE_PT_main(bpy.types.Panel):
    bl_idname = "CLOSE_PT_main"
    bl_label = "CloSe"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "CloSe"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.close_blender
        if settings.status:
            layout.label(text=settings.status, icon="INFO")
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            layout.label(text="Select a scan (a mesh object)", icon="ERROR")


class CLOSE_PT_model(bpy.types.Panel):
    bl_idname = "CLOSE_PT_model"
    bl_label = "Model"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "CloSe"
    bl_parent_id = "CLOSE_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.close_blender
        prefs = get_prefs(context)
        layout.prop(settings, "checkpoint", placeholder=prefs.default_checkpoint)
        layout.prop(prefs, "device")
        row = layout.row(align=True)
        row.operator("close.worker_check", icon="CHECKMARK")
        row.operator("close.worker_stop", text="", icon="CANCEL")
        if prefs.last_check:
            col = layout.column(align=True)
            for line in prefs.last_check.splitlines():
                col.label(text=line)


class CLOSE_PT_garments(bpy.types.Panel):
    bl_idname = "CLOSE_PT_garments"
    bl_label = "Garments"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "CloSe"
    bl_parent_id = "CLOSE_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.close_blender
        layout.prop(settings, "auto_garments")
        if settings.auto_garments:
            layout.prop(settings, "auto_min_share")
        grid = layout.grid_flow(columns=2, even_columns=True, align=True)
        grid.enabled = not settings.auto_garments
        for i in range(N_CLASSES):
            grid.prop(settings, "garments", index=i, text=DISPLAY_NAMES[i], toggle=True)


classes = (CLOSE_PT_main, CLOSE_PT_model, CLOSE_PT_garments)
