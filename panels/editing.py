"""Sidebar sub-panel "Fix Labels": CloSe-T's correction tools on Blender's selection."""

from __future__ import annotations

import bpy

from .base import SubPanel


class CLOSE_PT_fix_labels(SubPanel, bpy.types.Panel):
    bl_idname = "CLOSE_PT_fix_labels"
    bl_label = "Fix Labels"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        obj = context.active_object
        return obj is not None and obj.type == "MESH"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        col = layout.column(align=True)
        col.label(text="Selection (Edit Mode)")
        col.operator_menu_enum("close.assign_label", "label", text="Assign Class",
                               icon="BRUSH_DATA")
        col.operator("close.majority_vote", icon="GROUP_VERTEX")
        col.operator_menu_enum("close.select_label", "label", text="Select Class",
                               icon="RESTRICT_SELECT_OFF")
        col.operator("close.grow_selection", icon="ADD")
        col.operator("close.select_by_color", icon="EYEDROPPER")

        col = layout.column(align=True)
        col.label(text="Whole Scan")
        col.operator("close.replace_label", icon="ARROW_LEFTRIGHT")
        col.operator("close.smooth_labels", icon="MOD_SMOOTH")
        col.operator("close.remove_islands", icon="MOD_DECIM")
        col.operator("close.label_overlay", icon="OVERLAY")

        col = layout.column(align=True)
        col.label(text="Paint")
        col.operator("close.paint_labels", icon="VPAINT_HLT")
        row = col.row(align=True)
        row.operator("close.sync_from_paint", text="Sync Paint", icon="FILE_REFRESH")
        row.operator("close.sync_from_groups", text="Sync Groups", icon="GROUP_VERTEX")


classes = (CLOSE_PT_fix_labels,)
