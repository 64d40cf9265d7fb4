"""`python -m tests.reliability.counted_cli ARGS...`: the `m2cd` CLI with every block computation
counted (one line per `predict_block` call appended to $M2CD_TEST_CALLS), to prove in a separate
process (same thread settings as the faulted run) that a resumed run recomputes no finished block."""

from __future__ import annotations

import os
import sys


def main() -> int:
    import pipeline.engine.blend as blend
    from flows.cli import main as cli

    real, calls = blend.predict_block, os.environ["M2CD_TEST_CALLS"]

    def counted(grid, core, *args, **kwargs):
        with open(calls, "a") as f:
            f.write(f"{core}\n")
        return real(grid, core, *args, **kwargs)

    blend.predict_block = counted
    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
