"""Body models (Anny, SMPL), automatic fitting to scans and canonical coordinates.

Everything here imports torch; the core package (close_blender) never imports it.
"""
