"""Ctrl-C in the finalize and publish phases (issue 15 points 1 and 10), `--workers 1` and `2`,
with test_interrupt.py's scene: exit 130 with the one interrupted line, no traceback, no commit
record, and the same command completes the run to the clean products.

SIGINT is raised at a known moment by the run itself (`M2CD_CRASH_AT=<point>:INT`, inert by
default): in finalize before the products are written, and in publish after the first product
went into place. Block-phase interrupts are test_interrupt.py's."""

from __future__ import annotations

import pytest

from tests.reliability import test_interrupt as interrupt
from tests.reliability.support import cli_env, fingerprint, run_cli

scene, clean = interrupt.scene, interrupt.clean  # the module fixtures, shared


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("point", ["finalize", "moved-change_prob.tif"])
def test_ctrl_c_in_finalize_or_publish_exits_130_and_the_rerun_completes(
    scene, clean, tmp_path, workers, point
):
    out = tmp_path / "out"
    args = interrupt.scene_detect_args(scene, out, workers)
    res = run_cli(args, env=cli_env(M2CD_CRASH_AT=f"{point}:INT"))
    assert res.returncode == 130, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == interrupt.DETECT_LINE
    assert "Traceback" not in res.stderr and "terminate called" not in res.stderr
    assert not (out / "run.json").exists()
    assert (out / "change_prob.tif").exists() == (point != "finalize")
    rerun = run_cli(args)
    assert rerun.returncode == 0, rerun.stderr
    assert "(16 resumed)" in rerun.stdout
    assert fingerprint(out) == clean
    assert not (out / ".m2cd").exists()
