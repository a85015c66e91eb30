"""``python -m close_blender``: the command line."""

import sys

from .cli import main

sys.exit(main())
