"""Subcommands of the command line, one module each (see ``close_blender.cli``)."""
