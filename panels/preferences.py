"""Add-on preferences: which Python runs the worker, device, default checkpoint, data folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty

# The extension's own package (``bl_ext.<repo>.close_blender``): this module is one level down.
ADDON_PACKAGE = __package__.rpartition(".")[0]
EXTENSION_ROOT = Path(__file__).resolve().parents[1]

DEVICE_ITEMS = (
    ("AUTO", "Auto", "CUDA if available, then Apple MPS, then the CPU"),
    ("CUDA", "CUDA", "An NVIDIA GPU (needs a CUDA build of torch in the worker's Python)"),
    ("MPS", "Apple MPS", "The GPU of an Apple Silicon Mac"),
    ("CPU", "CPU", "The processor: slower, always available"),
)


class ClosePreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    python_source: EnumProperty(
        name="Worker Python",
        description="Which Python runs the model in its own process (Blender never imports torch)",
        items=(
            ("BLENDER", "Blender's Python",
             "Blender's own Python, with packages installed into this extension's user folder"),
            ("CUSTOM", "Other Python",
             "An existing Python environment that already has torch (e.g. with CUDA)"),
        ),
        default="BLENDER",
    )
    python_path: StringProperty(
        name="Python Executable",
        description="Path to the python executable of an environment with torch, anny, trimesh, "
                    "scipy, safetensors, smplx and pyyaml installed",
        subtype="FILE_PATH",
        default="",
    )
    device: EnumProperty(
        name="Device",
        description="Where the worker runs the network",
        items=DEVICE_ITEMS,
        default="AUTO",
    )
    default_checkpoint: StringProperty(
        name="Default Checkpoint",
        description="Model used when a scan is segmented: 'default' (the bundled model), "
                    "a published CloSe-Net .pth (with its _cfg.yaml beside it) or a .safetensors file",
        default="default",
    )
    data_folder: StringProperty(
        name="Data Folder",
        description="Where corrections and fine-tuned model versions are stored. "
                    "Empty: this extension's user folder",
        subtype="DIR_PATH",
        default="",
    )
    job_timeout: FloatProperty(
        name="Worker Timeout",
        description="Seconds without any sign of life from the worker after which it is "
                    "stopped and the job fails (the scan is left untouched)",
        default=600.0, min=10.0, soft_max=3600.0, subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE",
    )
    last_check: StringProperty(
        name="Worker Check",
        description="What the last check of the worker's Python found",
        default="",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        col = layout.column(heading="Worker")
        col.prop(self, "python_source", expand=True)
        if self.python_source == "CUSTOM":
            col.prop(self, "python_path")
        col.prop(self, "device")
        row = col.row(align=True)
        row.operator("close.worker_check", icon="CHECKMARK")
        row.operator("close.worker_stop", icon="CANCEL")
        if self.last_check:
            box = col.box()
            for line in self.last_check.splitlines():
                box.label(text=line)
        if self.python_source == "BLENDER":
            sub = col.column()
            if bpy.app.online_access:
                sub.operator("close.install_packages", icon="IMPORT")
            else:
                sub.label(text="Installing packages needs Online Access "
                               "(Preferences > System > Network)", icon="INFO")
        col = layout.column(heading="Model")
        col.prop(self, "default_checkpoint")
        col = layout.column(heading="Storage")
        col.prop(self, "data_folder")
        col.label(text=f"In use: {data_dir(self)}", icon="FILE_FOLDER")


def get_prefs(context: bpy.types.Context | None = None) -> ClosePreferences:
    context = context or bpy.context
    return context.preferences.addons[ADDON_PACKAGE].preferences


def user_dir(*parts: str, create: bool = True) -> Path:
    """A folder inside this extension's user folder (kept across updates)."""
    return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, path=os.path.join(*parts),
                                              create=create))


def data_dir(prefs: ClosePreferences | None = None) -> Path:
    """The data folder for corrections and model versions (preference, else the user folder)."""
    prefs = prefs or get_prefs()
    if prefs.data_folder:
        return Path(bpy.path.abspath(prefs.data_folder))
    return user_dir("data")


def is_checkpoint_path(spec: str) -> bool:
    """Whether a checkpoint spec is a file path rather than a name like ``default``."""
    return bool(spec) and (spec.startswith(("//", "~")) or any(c in spec for c in "/\\."))


def checkpoint_path(spec: str) -> str:
    """``spec`` as the worker must get it: a path made absolute (blend-relative ``//``,
    ``~`` and relative paths resolved here, since the worker runs elsewhere); a name as is."""
    if not is_checkpoint_path(spec):
        return spec
    return os.path.abspath(os.path.expanduser(bpy.path.abspath(spec)))


def current_checkpoint(context: bpy.types.Context | None = None, explicit: str = "") -> str:
    """The checkpoint segmentation and fine-tuning start from: an explicit choice, else the
    scene's Checkpoint field, else the active model version of the data folder, else the
    preferences' default. Paths come back absolute, names (``default``) unchanged."""
    from ..close_blender.model_versions import active_checkpoint

    context = context or bpy.context
    prefs = get_prefs(context)
    spec = (explicit.strip() or context.scene.close_blender.checkpoint.strip()
            or active_checkpoint(data_dir(prefs)) or prefs.default_checkpoint.strip())
    return checkpoint_path(spec)


def packages_dir() -> Path:
    """Where 'Install packages' puts the worker's packages for Blender's own Python."""
    return user_dir("site-packages")


def worker_python(prefs: ClosePreferences | None = None) -> str:
    """The executable that runs the worker; raises CloseError when "Other Python" is
    chosen without a path (never a silent fall-back to Blender's Python)."""
    from ..close_blender.errors import CloseError

    prefs = prefs or get_prefs()
    if prefs.python_source == "CUSTOM":
        if not prefs.python_path.strip():
            raise CloseError("'Other Python' is chosen for the worker but no executable is set",
                             "set the Python executable in the add-on preferences, or choose "
                             "Blender's Python")
        return bpy.path.abspath(prefs.python_path.strip())
    return sys.executable


classes = (ClosePreferences,)
