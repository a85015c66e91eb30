"""Collections the operators put new objects into, always usable in the current view layer.

A collection the user excluded from the view layer (or unlinked from the
scene) holds objects that cannot be selected or made active: Blender raises
then, after the operator has already changed data. So the operators get their
collections here, before they change anything.
"""

from __future__ import annotations

import bpy


def _layer_paths(layer: bpy.types.LayerCollection, coll: bpy.types.Collection,
                 path: tuple = ()) -> list[tuple[bpy.types.LayerCollection, ...]]:
    """Every chain of layer collections from ``layer`` down to ``coll``."""
    path = (*path, layer)
    if layer.collection == coll:
        return [path]
    found = []
    for child in layer.children:
        found.extend(_layer_paths(child, coll, path))
    return found


def show_in_view_layer(context: bpy.types.Context, coll: bpy.types.Collection
                       ) -> bpy.types.LayerCollection:
    """Make ``coll`` part of the scene and of the active view layer, not excluded and not
    hidden; returns its layer collection.

    A collection reachable only through excluded parents is linked straight under the
    scene collection, so that nothing of the user's is switched back on.
    """
    root = context.view_layer.layer_collection
    paths = [p for p in _layer_paths(root, coll) if not any(lc.exclude for lc in p[:-1])]
    if not paths:
        scene_root = context.scene.collection
        if coll.name not in scene_root.children:
            scene_root.children.link(coll)
        paths = [p for p in _layer_paths(root, coll) if len(p) == 2]
    layer = paths[0][-1]
    layer.exclude = False
    layer.hide_viewport = False
    coll.hide_viewport = False
    return layer


def scene_collection(context: bpy.types.Context, name: str) -> bpy.types.Collection:
    """The collection ``name`` (created when missing), linked into the scene and shown in
    the current view layer, so objects in it can be selected and made active."""
    coll = bpy.data.collections.get(name)
    if coll is None or coll.library is not None:
        coll = bpy.data.collections.new(name)
    show_in_view_layer(context, coll)
    return coll
