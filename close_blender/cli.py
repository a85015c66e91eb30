"""Command line: ``close-blender`` / ``python -m close_blender``.

Each subcommand lives in ``close_blender/commands/<name>.py`` and defines
``HELP``, ``ORDER``, ``add_arguments(parser)`` and ``run(args) -> int``. Command
modules import nothing heavy at module level, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from collections.abc import Sequence

from . import __version__, commands
from .errors import Cancelled, CloseError
from .memory import keep_freed_memory


def _command_modules() -> list:
    mods = [importlib.import_module(f"{commands.__name__}.{info.name}")
            for info in pkgutil.iter_modules(commands.__path__) if not info.name.startswith("_")]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="close-blender",
        description="Clothing segmentation of 3D human scans with CloSe-Net.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        name = mod.__name__.rsplit(".", 1)[1]
        p = sub.add_parser(name, help=mod.HELP, description=(mod.__doc__ or mod.HELP).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    keep_freed_memory()  # the commands run torch in this process (close_blender/memory.py)
    try:
        return int(args._run(args) or 0)
    except CloseError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  what to do: {exc.hint}", file=sys.stderr)
        return 2
    except Cancelled:
        print("cancelled; nothing was written", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
