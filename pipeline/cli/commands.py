"""Imports each command module so that it attaches itself to `pipeline.cli.app`.

Add one line per command module.
"""

# ruff: noqa: F401
from pipeline.cli import bench, convert, detect, evaluate, synth, train
from pipeline.viewer import command as view
