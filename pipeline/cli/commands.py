"""Imports each command module so that it attaches itself to `pipeline.cli.app`.

Add one line per command module.
"""

# ruff: noqa: F401
from pipeline.cli import detect
from pipeline.cli import bench
from pipeline.cli import synth
from pipeline.cli import convert
from pipeline.cli import train
from pipeline.cli import evaluate
