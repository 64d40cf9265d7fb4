"""`m2cd bench model`: pairs/s of the eval forward and its fraction of the machine's matmul peak.

Two FLOP counts, both with torch's FlopCounterMode (matmuls, convolutions and attention matmuls;
elementwise ops are not counted), are reported side by side:

- ``model_flops_per_pair``: the FLOPs the *architecture* needs, counted on the official order
  (sparse top-k MoE, each expert only on its routed tokens; resize-concatenate-fuse decoder; see
  ``m2cd.model.reference_order``). Like MFU it does not depend on how the forward is implemented,
  so it rises only when pairs/s rises. ``peak_fraction`` (the goal figure) uses it.
- ``executed_flops_per_pair``: what the fast forward executes (the dense MoE computes all E
  experts and zero-weights E−k of them; the folded decoder skips most of the fusion conv).

The machine's matmul peak (fp32 and bf16) is measured in the same run, so the fractions compare
like with like even on a loaded machine. Times are medians over ``repeats`` after ``warmup``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import m2cd
from m2cd.model import reference_order
from pipeline.bench.machine import machine_info
from pipeline.engine.device import cpu_has_native_bf16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(
    fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int
) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of a square matmul large enough to saturate the device (2048³ CPU, 8192³ GPU)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = _median_seconds(lambda: torch.mm(a, b), device, repeats, warmup=2)
    return 2 * n**3 / sec / 1e9


def _sdpa_cpu_flops(q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, **kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(q_shape, k_shape, v_shape)


def _flops(model: torch.nn.Module, optical: torch.Tensor, sar: torch.Tensor) -> int:
    # torch counts the CUDA SDPA kernels but not the CPU flash kernel: add it.
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        model(optical, sar)
    return int(counter.get_total_flops())


def count_flops(model: torch.nn.Module, optical: torch.Tensor, sar: torch.Tensor) -> dict[str, Any]:
    """Executed and model FLOPs of one eval forward (see the module docstring).

    Also returns the largest |difference| between the two orders' logits: they must compute the
    same function, otherwise the model-FLOP count would describe another model.
    """

    executed = _flops(model, optical, sar)
    with reference_order(model):
        model_flops = _flops(model, optical, sar)
        with torch.no_grad():
            ref = model(optical, sar)
    with torch.no_grad():
        diff = (model(optical, sar).float() - ref.float()).abs().max().item()
    return {"executed": executed, "model": model_flops, "max_abs_diff": diff}


def run(
    model_name: str = "m2cd_mit_b1",
    batch: int = 8,
    size: int = 256,
    repeats: int = 5,
    warmup: int = 2,
    device: str = "cpu",
) -> dict[str, Any]:
    """Benchmark one named model config; returns a JSON-serialisable dict of the figures."""

    dev = torch.device(device)
    model = m2cd.build_model(model_name).eval().to(dev)
    gen = torch.Generator().manual_seed(0)
    optical = torch.randn(batch, model.config.bands.optical_channels, size, size, generator=gen).to(
        dev
    )
    sar = torch.randn(batch, model.config.bands.sar_channels, size, size, generator=gen).to(dev)
    if dev.type == "cuda":  # the GPU path of the scene engine: channels_last + bf16 autocast
        model = model.to(memory_format=torch.channels_last)
        optical = optical.contiguous(memory_format=torch.channels_last)
        sar = sar.contiguous(memory_format=torch.channels_last)
    counts = count_flops(model, optical, sar)
    executed, model_flops = counts["executed"], counts["model"]

    def forward(dtype: torch.dtype | None) -> Callable[[], Any]:
        def fn() -> Any:
            with (
                torch.no_grad(),
                torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None),
            ):
                return model(optical, sar)

        return fn

    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "model": model_name,
        "device": _device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": batch,
        "size": size,
        "repeats": repeats,
        "model_flops_per_pair": model_flops / batch,
        "executed_flops_per_pair": executed / batch,
        "reference_max_abs_diff": counts["max_abs_diff"],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    # bf16 on a CPU without native BF16 is emulated: minutes per run and no figure worth having
    # (an AVX2-only EPYC took 15 min for `m2cd bench model`), so it is skipped and said so.
    native_bf16 = dev.type == "cuda" or cpu_has_native_bf16()
    precisions: list[tuple[str, torch.dtype | None]] = [("fp32", None)]
    if native_bf16:
        precisions.append(("bf16", torch.bfloat16))
    else:
        result["bf16_skipped"] = f"no native BF16 on this CPU ({_cpu_capability()}): emulated"
    peaks = {
        label: matmul_peak_gflops(dev, dtype or torch.float32, repeats)
        for label, dtype in precisions
    }
    for label, dtype in precisions:
        sec = _median_seconds(forward(dtype), dev, repeats, warmup)
        result[label] = {
            "seconds_per_batch": sec,
            "pairs_per_s": batch / sec,
            "model_gflops": model_flops / sec / 1e9,
            "executed_gflops": executed / sec / 1e9,
            "model_peak_fraction": model_flops / sec / 1e9 / peaks[label],
            "executed_peak_fraction": executed / sec / 1e9 / peaks[label],
        }
    result["peak_gflops"] = peaks
    result["loadavg_1min"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    # The goal figure: model FLOPs (implementation-independent, proportional to pairs/s).
    result["peak_fraction"] = result["fp32"]["model_peak_fraction"]
    result["peak_fraction_flops"] = "model"
    result["machine"] = machine_info()
    return result


def _cpu_capability() -> str:
    return str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")())


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)

    return f"cpu ({platform.processor() or platform.machine()})"


def format_table(r: dict[str, Any]) -> str:
    """Human-readable summary of ``run``'s result."""
    lines = [
        f"{r['model']} on {r['device']} ({r['threads']} threads), batch {r['batch']} × {r['size']}², "
        f"median of {r['repeats']}; GFLOP/pair: model {r['model_flops_per_pair'] / 1e9:.2f}, "
        f"executed {r['executed_flops_per_pair'] / 1e9:.2f}",
        f"{'':6}{'pairs/s':>9}{'model GF/s':>12}{'exec GF/s':>11}{'peak GF/s':>11}"
        f"{'model frac':>12}{'exec frac':>11}",
    ]
    for label in ("fp32", "bf16"):
        if label not in r:
            lines.append(f"{label:6}skipped: {r.get('bf16_skipped', '')}")
            continue
        x = r[label]
        lines.append(
            f"{label:6}{x['pairs_per_s']:9.2f}{x['model_gflops']:12.1f}{x['executed_gflops']:11.1f}"
            f"{r['peak_gflops'][label]:11.1f}{x['model_peak_fraction']:12.2f}"
            f"{x['executed_peak_fraction']:11.2f}"
        )
    lines.append(f"peak_fraction (fp32, model FLOPs; goal ≥ 0.5): {r['peak_fraction']:.2f}")
    return "\n".join(lines)
