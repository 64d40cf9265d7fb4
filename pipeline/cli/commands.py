"""Imports each command module so that it attaches itself to `pipeline.cli.app`.

Add one line per command module.
"""

# ruff: noqa: F401
