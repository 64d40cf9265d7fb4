"""Orchestration commands of the `m2cd` CLI; each module attaches itself to `pipeline.cli.app`.

Add one line per command module.
"""

# ruff: noqa: F401
from flows import labels, serve
