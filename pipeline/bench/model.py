"""`m2cd bench model`: pairs/s and achieved GFLOP/s of the eval forward, against the matmul peak.

FLOPs are counted once with torch's FlopCounterMode (matmuls/convs/attention; elementwise ops are
not counted). The machine's matmul peak (fp32 and bf16) is measured in the same run, so the
``peak_fraction`` (achieved fp32 / fp32 peak) compares like with like even on a loaded machine.
Times are medians over ``repeats`` after ``warmup`` excluded runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


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


def count_flops(
    model: torch.nn.Module, optical: torch.Tensor, sar: torch.Tensor
) -> tuple[int, int]:
    """(executed FLOPs, useful FLOPs) of one eval forward.

    The MoE runs all E experts densely and zero-weights the unselected ones (see m2cd.moe), so
    only top_k/E of its expert FLOPs are useful work; "useful" discounts the rest.
    """
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(optical, sar)
    total = int(counter.get_total_flops())
    moes = getattr(model, "moes", None)
    if moes is None:
        return total, total
    by_module = counter.get_flop_counts()
    moe_flops = sum(sum(by_module.get(f"M2CD.moes.{i}", {}).values()) for i in range(len(moes)))
    m = model.config.moe
    return total, int(total - moe_flops * (1 - m.top_k / m.experts))


def run(
    model_name: str = "m2cd_mit_b1",
    batch: int = 8,
    size: int = 256,
    repeats: int = 5,
    warmup: int = 2,
    device: str = "cpu",
) -> dict[str, Any]:
    """Benchmark one named model config; returns a JSON-serialisable dict of the figures."""
    import m2cd

    dev = torch.device(device)
    model = m2cd.build_model(model_name, with_teacher=False).eval().to(dev)
    gen = torch.Generator().manual_seed(0)
    optical = torch.randn(batch, model.config.bands.optical_channels, size, size, generator=gen).to(
        dev
    )
    sar = torch.randn(batch, model.config.bands.sar_channels, size, size, generator=gen).to(dev)
    if dev.type == "cuda":  # the GPU path of the scene engine: channels_last + bf16 autocast
        model = model.to(memory_format=torch.channels_last)
        optical = optical.contiguous(memory_format=torch.channels_last)
        sar = sar.contiguous(memory_format=torch.channels_last)
    flops, useful = count_flops(model, optical, sar)

    def forward(dtype: torch.dtype | None) -> Callable[[], Any]:
        def fn() -> Any:
            with (
                torch.no_grad(),
                torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None),
            ):
                return model(optical, sar)

        return fn

    result: dict[str, Any] = {
        "model": model_name,
        "device": _device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": batch,
        "size": size,
        "repeats": repeats,
        "flops_per_pair": flops / batch,
        "useful_flops_per_pair": useful / batch,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    peaks = {
        "fp32": matmul_peak_gflops(dev, torch.float32, repeats),
        "bf16": matmul_peak_gflops(dev, torch.bfloat16, repeats),
    }
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        sec = _median_seconds(forward(dtype), dev, repeats, warmup)
        result[label] = {
            "seconds_per_batch": sec,
            "pairs_per_s": batch / sec,
            "gflops": flops / sec / 1e9,
            "peak_fraction": flops / sec / 1e9 / peaks[label],
            "useful_peak_fraction": useful / sec / 1e9 / peaks[label],
        }
    result["peak_gflops"] = peaks
    result["peak_fraction"] = result["fp32"]["peak_fraction"]
    return result


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def format_table(r: dict[str, Any]) -> str:
    """Human-readable summary of ``run``'s result."""
    lines = [
        f"{r['model']} on {r['device']} ({r['threads']} threads), batch {r['batch']} × {r['size']}², "
        f"{r['flops_per_pair'] / 1e9:.2f} GFLOP/pair executed "
        f"({r['useful_flops_per_pair'] / 1e9:.2f} useful), median of {r['repeats']}",
        f"{'':6}{'pairs/s':>10}{'GFLOP/s':>10}{'peak GFLOP/s':>14}{'fraction':>10}{'useful':>8}",
    ]
    for label in ("fp32", "bf16"):
        x = r[label]
        lines.append(
            f"{label:6}{x['pairs_per_s']:10.2f}{x['gflops']:10.1f}"
            f"{r['peak_gflops'][label]:14.1f}{x['peak_fraction']:10.2f}{x['useful_peak_fraction']:8.2f}"
        )
    return "\n".join(lines)
