"""Show the version, the 18 classes and which optional packages this Python has."""

from __future__ import annotations

import argparse
import importlib.util
import json

from .. import __version__
from ..labels import CLASS_NAMES, DISPLAY_NAMES, PALETTE

HELP = "show version, classes and available packages"
ORDER = 90

PACKAGES = ("numpy", "torch", "anny", "trimesh", "scipy", "safetensors", "smplx", "yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    found = {name: importlib.util.find_spec(name) is not None for name in PACKAGES}
    info = {
        "version": __version__,
        "classes": [
            {"index": i, "name": n, "display": d, "color": PALETTE[i].tolist()}
            for i, (n, d) in enumerate(zip(CLASS_NAMES, DISPLAY_NAMES, strict=True))
        ],
        "packages": found,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"close-blender {__version__}")
    print("classes: " + ", ".join(f"{i} {n}" for i, n in enumerate(CLASS_NAMES)))
    print("packages: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in found.items()))
    return 0
