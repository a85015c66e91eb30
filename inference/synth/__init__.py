"""Synthetic clothed scans with exact labels and canonical coordinates.

``generate_scan(seed, n_points, classes)`` -> CloSe-D arrays (see
docs/synthetic-scans.md), ``write_scan(out_dir, stem, scan, mesh_format)``
writes them with a matching mesh, ``make_samples(out_dir)`` writes the small
fixed set the tests and the demo use.
"""

from .generator import NPZ_KEYS, generate_scan, make_samples, mesh_vertices, write_scan

__all__ = ["NPZ_KEYS", "generate_scan", "make_samples", "mesh_vertices", "write_scan"]
