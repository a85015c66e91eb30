"""CloSe for Blender, the Blender-free core: labels, scan arrays, CloSe-D I/O,
label-editing algorithms and the command line.

Pure Python + numpy. Never imports ``bpy``; imports ``torch`` only inside the
functions (mostly in the ``inference`` package) that need it.
"""

__version__ = "0.1.0"
