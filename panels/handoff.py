"""Sidebar sub-panel "Hand-off": separate garments, bind them to the body, and
CloSe-D files in and out."""

from __future__ import annotations

import bpy

from .base import SubPanel


class CLOSE_PT_handoff(SubPanel, bpy.types.Panel):
    bl_idname = "CLOSE_PT_handoff"
    bl_label = "Hand-off"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        obj = context.active_object
        is_mesh = obj is not None and obj.type == "MESH"
        labelled = is_mesh and "close_label" in obj.data.attributes

        col = layout.column(align=True)
        col.label(text="Garments")
        row = col.row(align=True)
        row.enabled = labelled
        row.operator("close.separate_garments", icon="MOD_EXPLODE")
        if is_mesh and not labelled:
            col.label(text="Segment the scan first", icon="INFO")

        col = layout.column(align=True)
        col.label(text="Rigging")
        row = col.row(align=True)
        row.enabled = is_mesh
        row.operator("close.bind_to_body", icon="ARMATURE_DATA")
        if is_mesh and obj.close_blender.body_fit:
            col.label(text=obj.close_blender.body_fit, icon="OUTLINER_OB_ARMATURE")

        col = layout.column(align=True)
        col.label(text="CloSe-D Files")
        row = col.row(align=True)
        row.enabled = is_mesh
        row.operator("close.export_closed", text="Export .npz", icon="EXPORT")
        row.operator("close.import_closed_labels", text="Load Labels", icon="IMPORT")


classes = (CLOSE_PT_handoff,)
