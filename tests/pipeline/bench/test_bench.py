"""`m2cd bench pipeline|memory --json` run end to end on toy sizes (the figures are in BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import threading

import pytest

from pipeline.bench.machine import pinned_to_cores


def _bench_json(capsys, args: list[str]) -> dict:
    from flows.cli import main

    assert main(["bench", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_pipeline_reports_efficiency_on_the_same_tiles(capsys):
    r = _bench_json(
        capsys,
        [
            "pipeline",
            "--model",
            "tiny",
            "--size",
            "160",
            "--tile",
            "64",
            "--overlap",
            "16",
            "--block",
            "256",
            "--device",
            "cpu",
        ],
    )
    assert r["tiles"] == 9 and r["tile_runs"] == 9  # one block: no halo re-runs
    assert r["forward_tiles_per_s"] > 0 and r["detect_tiles_per_s"] > 0
    # one repeat: the detect against the mean of the forward passes either side of it
    assert r["efficiency_per_repeat"] == [r["efficiency"]]
    assert r["efficiency"] == pytest.approx(
        r["detect_tiles_per_s"] / r["forward_tiles_per_s"], rel=1e-2
    )


@pytest.mark.slow
def test_bench_memory_measures_each_scene_in_its_own_process(capsys):
    r = _bench_json(
        capsys,
        [
            "memory",
            "--small",
            "128",
            "--large",
            "256",
            "--tile",
            "64",
            "--overlap",
            "16",
            "--block",
            "128",
        ],
    )
    small, large = r["small"], r["large"]
    assert small["blocks"] == 1 and large["blocks"] == 4
    assert large["tiles"] > small["tiles"]
    assert 100 < small["peak_rss_mib"] < 8000 and 100 < large["peak_rss_mib"] < 8000
    assert r["rss_ratio"] == pytest.approx(large["peak_rss_mib"] / small["peak_rss_mib"], rel=1e-3)
    assert r["full_scene_accumulator_gib"] == pytest.approx(256 * 256 * 12 / 2**30, rel=1e-3)


def test_bench_model_prints_one_json_object(capsys):
    from flows.cli import main

    args = ["bench", "model", "--model", "tiny", "--batch", "1", "--size", "64"]
    assert main([*args, "--repeats", "1", "--warmup", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "tiny" and result["batch"] == 1
    # model FLOPs (official sparse order) > executed for tiny: the folded decoder skips more
    # than the dense MoE adds; both orders compute the same logits
    assert result["model_flops_per_pair"] > result["executed_flops_per_pair"] > 0
    assert result["reference_max_abs_diff"] < 1e-4
    from pipeline.engine.device import cpu_has_native_bf16

    timed = ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)
    assert ("bf16" in result) == cpu_has_native_bf16()  # emulated bf16 is skipped, and said so
    for label in timed:
        assert result[label]["pairs_per_s"] > 0 and result["peak_gflops"][label] > 0
    assert result["peak_fraction"] == result["fp32"]["model_peak_fraction"]
    assert main(["bench", "model", "--model", "no_such_model"]) == 2


def test_every_bench_names_its_cpu_and_isa():
    from pipeline.bench.machine import cpu_model_name, machine_info

    info = machine_info()
    assert info["cores"] >= 1 and info["torch_threads"] >= 1
    for flag in ("avx2", "avx512", "avx512_bf16", "amx_bf16", "native_bf16"):
        assert isinstance(info[flag], bool)
    assert info["torch_capability"]
    sample = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n"
    )
    assert cpu_model_name(sample) == "AMD EPYC 7B13"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="per-thread affinity is Linux's")
def test_the_one_core_run_of_the_scaling_bench_runs_on_one_core_and_gives_the_cores_back():
    allowed = os.sched_getaffinity(0)
    seen: dict[str, set[int]] = {}
    started = threading.Event()
    stop = threading.Event()

    def before_pinning() -> None:  # a pool thread that exists before the bench pins
        started.set()
        stop.wait()
        seen["old thread after"] = os.sched_getaffinity(0)

    old = threading.Thread(target=before_pinning)
    old.start()
    started.wait()
    try:
        with pinned_to_cores(1) as ok:
            new = threading.Thread(target=lambda: seen.update(new=os.sched_getaffinity(0)))
            new.start()
            new.join()
            seen["main"] = os.sched_getaffinity(0)
            seen["old thread"] = os.sched_getaffinity(old.native_id)
    finally:  # the old thread ends whatever happened, so a failure cannot hang the suite
        stop.set()
        old.join()
    assert ok
    assert len(seen["main"]) == len(seen["new"]) == len(seen["old thread"]) == 1
    assert os.sched_getaffinity(0) == allowed == seen["old thread after"]
    with pinned_to_cores(len(allowed) + 1) as ok:  # more cores than the process has: no pinning
        assert not ok and os.sched_getaffinity(0) == allowed


@pytest.mark.slow
def test_null_model_bench_reports_the_ceiling_against_the_io_limit(capsys):
    args = ["pipeline", "--null-model", "--size", "200", "--tile", "64", "--overlap", "16"]
    r = _bench_json(capsys, [*args, "--block", "128", "--repeats", "1"])
    assert r["blocks"] == 4 and r["model"] == "null"
    for key in ("null_mpx_per_s", "io_limit_mpx_per_s", "mpx_per_s_per_core", "thread_scaling"):
        assert r[key] > 0, key
    assert r["io_ratio"] == pytest.approx(r["null_mpx_per_s"] / r["io_limit_mpx_per_s"], rel=1e-2)
    assert r["thread_scaling_pinned"] is (len(os.sched_getaffinity(0)) >= 2)
    split = r["split_seconds"]
    for stage in ("plan", "read", "normalise", "transfer", "model", "blend", "write", "finalize"):
        assert split[stage] > 0, stage
    # finalize and the block stages are parts of the one engine run
    assert split["finalize"] + split["write"] + split["blend"] < r["engine_seconds_all"][0]
    assert r["machine"]["cores"] >= 1 and "torch_capability" in r["machine"]
