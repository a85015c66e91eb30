"""Scene-level settings of the CloSe panel and per-object results (saved with the .blend
file); the live job status is on the window manager (never saved)."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    BoolVectorProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    StringProperty,
)

from ..close_blender.defaults import PASSES
from ..close_blender.labels import CLASS_NAMES, N_CLASSES

_DEFAULT_GARMENTS = tuple(name in ("Body", "TShirt", "Pants", "Shoes", "Hair")
                          for name in CLASS_NAMES)


class CloseSceneSettings(bpy.types.PropertyGroup):
    checkpoint: StringProperty(
        name="Checkpoint",
        description="Model to segment and fine-tune with, overriding the active model version: "
                    "'default' (the bundled model), a published .pth (with _cfg.yaml) or a "
                    ".safetensors file. Empty: the active model version, else the preferences' "
                    "default",
        default="",
    )
    garments: BoolVectorProperty(
        name="Garments",
        description="Classes present on the scan: the network only chooses among ticked classes",
        size=N_CLASSES,
        default=_DEFAULT_GARMENTS,
    )
    auto_garments: BoolProperty(
        name="Auto-detect",
        description="Run once with all classes, keep those covering a meaningful share of the "
                    "scan, then run again with only those",
        default=True,
    )
    auto_min_share: FloatProperty(
        name="Minimum Share",
        description="Auto-detect keeps a class when at least this share of the vertices gets it",
        default=0.01, min=0.0, max=0.5, subtype="FACTOR",
    )
    passes: IntProperty(
        name="Passes",
        description="Independent random chunkings averaged together: more passes give steadier "
                    "labels at proportionally more time (1 is twice as fast as the default 2)",
        default=PASSES, min=1, max=16,
    )
    finetune_layers: EnumProperty(
        name="Learn",
        description="What a fine-tuning round changes in the model",
        items=(
            ("colour", "Colour Look",
             "A colour mix in front of the network: for a scanner's or pipeline's colours "
             "(the measured default; docs/training.md)"),
            ("head", "Garment Head",
             "The last decoder layers: for garments the model confuses"),
            ("colour+head", "Both", "The colour mix and the last decoder layers"),
        ),
        default="colour",
    )
    body_source: EnumProperty(
        name="Body",
        description="The body model fitted to the scan, whose rest pose gives the network's body input",
        items=(
            ("ANNY", "Automatic (Anny)", "Fit the free Anny body automatically; no registration needed"),
            ("SMPL", "SMPL registration", "Use your own SMPL model files and a registration of this scan"),
        ),
        default="ANNY",
    )
    smpl_model_dir: StringProperty(
        name="SMPL Models",
        description="Folder holding your SMPL model files (SMPL_NEUTRAL.pkl etc.); "
                    "they are never shipped or downloaded",
        subtype="DIR_PATH",
    )
    smpl_registration: StringProperty(
        name="Registration",
        description="SMPL registration of this scan (.pkl or .npz with betas, body_pose, "
                    "global_orient, transl, optional scale and gender)",
        subtype="FILE_PATH",
    )
    show_label_colors: BoolProperty(
        name="Show Label Colours",
        description="After segmenting, switch the viewport to show the label colours",
        default=True,
    )

    def garment_names(self) -> list[str]:
        return [CLASS_NAMES[i] for i in range(N_CLASSES) if self.garments[i]]


class CloseClassStat(bpy.types.PropertyGroup):
    """One row of the per-class result table."""

    index: IntProperty(name="Class", description="Class index in the CloSe order")
    count: IntProperty(name="Vertices", description="Vertices labelled with this class")
    mean_confidence: FloatProperty(name="Confidence",
                                   description="Mean network confidence of these vertices",
                                   subtype="FACTOR")


class CloseObjectResult(bpy.types.PropertyGroup):
    """What the last segmentation of this object produced (kept with the .blend)."""

    stats: bpy.props.CollectionProperty(type=CloseClassStat)
    checkpoint: StringProperty(name="Checkpoint", description="Checkpoint that made the labels")
    checkpoint_sha256: StringProperty(name="Checkpoint Hash",
                                      description="SHA-256 of the checkpoint's weights")
    garments: StringProperty(name="Garments", description="Classes the network could choose from")
    body_fit: StringProperty(name="Body Fit", description="Quality of the automatic body fit")
    gate: StringProperty(
        name="Gated Version",
        description="With a gated fine-tuned version: which of its weights labelled this scan "
                    "(tuned, or fallback: the weights it started from, surer on this scan)")
    color_source: StringProperty(name="Colour Source",
                                 description="Where the scan colours given to the network came from")


classes = (CloseSceneSettings, CloseClassStat, CloseObjectResult)
