"""Sidebar panels in the 3D viewport, tab "CloSe"."""

from __future__ import annotations

from pathlib import Path

import bpy

from ..close_blender.labels import DISPLAY_NAMES, N_CLASSES
from .base import SidebarPanel, SubPanel
from .preferences import current_checkpoint, get_prefs


class CLOSE_PT_main(SidebarPanel, bpy.types.Panel):
    bl_idname = "CLOSE_PT_main"
    bl_label = "CloSe"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.close_blender
        status = getattr(context.window_manager, "close_blender_status", "")
        if status:
            layout.label(text=status, icon="INFO")
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            layout.label(text="Select a scan (a mesh object)", icon="ERROR")
        row = layout.row(align=True)
        row.scale_y = 1.5
        row.operator("close.segment", icon="MOD_CLOTH")
        row.operator("close.cancel", text="", icon="CANCEL")
        layout.prop(settings, "passes")
        layout.prop(settings, "show_label_colors")


class CLOSE_PT_model(SubPanel, bpy.types.Panel):
    bl_idname = "CLOSE_PT_model"
    bl_label = "Model"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.close_blender
        prefs = get_prefs(context)
        layout.prop(settings, "checkpoint", placeholder=prefs.default_checkpoint)
        if not settings.checkpoint:
            layout.label(text=f"Using: {Path(current_checkpoint(context)).name}", icon="FILE")
        layout.prop(prefs, "device")
        row = layout.row(align=True)
        row.operator("close.worker_check", icon="CHECKMARK")
        row.operator("close.worker_stop", text="", icon="CANCEL")
        if prefs.last_check:
            col = layout.column(align=True)
            for line in prefs.last_check.splitlines():
                col.label(text=line)


class CLOSE_PT_garments(SubPanel, bpy.types.Panel):
    bl_idname = "CLOSE_PT_garments"
    bl_label = "Garments"

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


class CLOSE_PT_body(SubPanel, bpy.types.Panel):
    bl_idname = "CLOSE_PT_body"
    bl_label = "Body"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.close_blender
        layout.prop(settings, "body_source", text="")
        if settings.body_source == "SMPL":
            layout.prop(settings, "smpl_model_dir")
            layout.prop(settings, "smpl_registration")
        obj = context.active_object
        result = getattr(obj, "close_blender", None) if obj is not None else None
        if result is not None and result.body_fit:
            layout.label(text=result.body_fit, icon="ARMATURE_DATA")
        layout.operator("close.fit_body", icon="OUTLINER_OB_ARMATURE")


class CLOSE_PT_result(SubPanel, bpy.types.Panel):
    bl_idname = "CLOSE_PT_result"
    bl_label = "Result"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        obj = context.active_object
        return obj is not None and obj.type == "MESH" and len(obj.close_blender.stats) > 0

    def draw(self, context: bpy.types.Context) -> None:
        result = context.active_object.close_blender
        layout = self.layout
        col = layout.column(align=True)
        header = col.row()
        header.label(text="Class")
        header.label(text="Vertices")
        header.label(text="Confidence")
        for row_data in sorted(result.stats, key=lambda r: -r.count):
            row = col.row()
            row.label(text=DISPLAY_NAMES[row_data.index])
            row.label(text=f"{row_data.count:,}")
            row.label(text=f"{row_data.mean_confidence:.2f}")
        if result.checkpoint:
            layout.label(text=f"Model: {result.checkpoint}", icon="FILE")
        if result.color_source == "grey":
            layout.label(text="No scan colours were found (grey used)", icon="ERROR")


classes = (CLOSE_PT_main, CLOSE_PT_model, CLOSE_PT_garments, CLOSE_PT_body, CLOSE_PT_result)
