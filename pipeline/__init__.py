"""Scene-scale engine: lazy scenes, global tile grid, blended inference, products, training data.

The Python API: `from pipeline import detect, predict` (`pipeline.api`). Both are looked up on
first use, so `import pipeline` stays light: importing torch and the engine costs ~5 s, which
`m2cd --help` (and any CLI command that does not run a model) must not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.api import detect, predict
    from pipeline.engine.finalize import RunSummary

__all__ = ["RunSummary", "detect", "predict"]


def __getattr__(name: str) -> Any:
    if name in ("detect", "predict"):
        # deferred: lazy: `import pipeline` (and m2cd --help) must not load the engine and torch
        from pipeline import api

        return getattr(api, name)
    if name == "RunSummary":
        # deferred: lazy, as above
        from pipeline.engine.finalize import RunSummary

        return RunSummary
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
