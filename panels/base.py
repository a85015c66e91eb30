"""Where every CloSe panel lives: the 3D viewport's sidebar, tab "CloSe"."""

from __future__ import annotations


class SidebarPanel:
    """Mixin for the "CloSe" tab of the 3D viewport sidebar."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "CloSe"


class SubPanel(SidebarPanel):
    """Mixin for a section under the main CloSe panel."""

    bl_parent_id = "CLOSE_PT_main"
