"""CloSe for Blender: clothing segmentation of human scans with CloSe-Net.

The extension's entry point. Everything bpy lives in ``operators/`` and
``panels/``; the Blender-free core is ``close_blender/``; torch runs only in a
separate worker process (``inference/``), never inside Blender.
"""

from __future__ import annotations

import bpy

from . import operators, panels

classes: tuple[type, ...] = (*panels.property_classes, *operators.classes, *panels.classes)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    panels.register_properties()


def unregister() -> None:
    operators.shutdown()
    panels.unregister_properties()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
