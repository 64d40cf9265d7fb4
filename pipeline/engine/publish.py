"""Publishing a finished run into OUT as a protocol with a commit record, so a crash at any step
leaves a state the next run of the same command completes, with no manual cleanup.

1. The products are written into staging (`finalize`); a crash here redoes them.
2. `staging/publish.json` (the intent) lists the products and records the summary. From here the
   staging products are final and the publish is only ever completed, never redone.
3. The `run.json` of an earlier run is removed (`--overwrite`): OUT holds no commit record now, so
   no reader takes the products that follow for that run's.
4. Each product is put in place: local disks rename it (atomic per product; one already moved is
   found in OUT and skipped), S3 replaces it by a copy (the staging copy stays whole until the
   commit, so an interrupted copy is simply copied again).
5. `OUT/run.json` is written (one atomic write: the commit), then staging is removed; a crash
   before the removal leaves a staging folder that the finished run's next call removes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pipeline.engine.crash_points import crash_point
from pipeline.engine.plan import MANIFEST, RunPlan
from pipeline.errors import M2CDError
from pipeline.io import storage

INTENT = "publish.json"


class PublishBrokenError(M2CDError):
    """A half publish whose product is neither in staging nor in OUT (removed by hand)."""


def read_intent(plan: RunPlan) -> dict[str, Any] | None:
    """The intent of a publish that started (step 2), or None when none did."""
    return storage.read_json(storage.join(plan.staging, INTENT), missing_ok=True)


def write_intent(plan: RunPlan, names: list[str], summary: dict[str, Any]) -> dict[str, Any]:
    """Step 2: record what is about to be published (the products are final from here)."""
    intent = {
        "format": "m2cd-publish/1",
        "run_key": plan.run_key,
        "names": names,
        "summary": summary,
    }
    storage.write_json(storage.join(plan.staging, INTENT), intent)
    crash_point("intent-written")
    return intent


def put_in_place(plan: RunPlan, names: list[str]) -> None:
    """Steps 3 and 4: drop another run's commit record, then each product into OUT (idempotent:
    a rerun after a crash anywhere in here finishes the same publish)."""
    manifest = storage.read_json(storage.join(plan.out, MANIFEST), missing_ok=True)
    if manifest is not None and manifest.get("run_key") != plan.run_key:
        storage.remove(storage.join(plan.out, MANIFEST))
    remote = storage.is_remote(plan.out)
    for name in names:
        src, dst = storage.join(plan.staging, name), storage.join(plan.out, name)
        if not storage.exists(src):
            if remote or not storage.exists(dst):
                raise PublishBrokenError(
                    f"{src}: missing from an interrupted publish of run {plan.run_key} (removed "
                    f"by hand?): run `m2cd clean {plan.out} --yes` and run again"
                )
            continue  # moved before the crash
        if storage.exists(dst):
            storage.remove(dst, recursive=True)
        if remote:
            storage.copy(src, dst)
        else:
            storage.move(src, dst)
        crash_point(f"moved-{name}")


def commit(plan: RunPlan, record: dict[str, Any]) -> None:
    """Step 5: `OUT/run.json` (the commit), then the staging goes."""
    storage.write_json(storage.join(plan.out, MANIFEST), record)
    crash_point("committed")
    remove_staging(plan)


def remove_staging(plan: RunPlan) -> None:
    """The run's staging folder, once its products are committed (missing is fine), and the
    `.m2cd` folder above it when nothing else is left there (local disks; S3 has no folders)."""
    storage.remove(plan.staging, recursive=True)
    parent = os.path.dirname(plan.staging)
    if not storage.is_remote(parent):
        with contextlib.suppress(OSError):  # not empty: other runs' staging or the writer lock
            os.rmdir(parent)
