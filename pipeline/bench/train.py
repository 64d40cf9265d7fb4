"""`m2cd bench train`: training pairs/s beside the eval forward's pairs/s, in the same run.

A training step is forward + backward + optimiser step in train mode (noisy MoE gating, O2SP
branch when the config has it, auxiliary losses), at the precision the trainer picks for this
device (``pipeline.engine.device.autocast_dtype``). Backward costs about twice the forward,
so a step at 1/3 of the eval throughput is the ideal; the goal is ``ratio`` ≥ 0.3.

Inputs are random tensors: the MoE dispatch has a fixed shape, so the cost does not depend on
the pixels. Times are medians over ``repeats`` after ``warmup`` steps.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import m2cd
from pipeline.bench.machine import machine_info
from pipeline.engine.device import autocast_dtype, cpu_has_native_bf16, resolve_device


def _median(fn, device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(
    model_name: str = "m2cd_mit_b0",
    batch: int = 16,
    size: int = 128,
    repeats: int = 5,
    warmup: int = 2,
    device: str = "auto",
    precision: str = "auto",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Median seconds of one training step and of one eval forward of the same batch."""

    dev = resolve_device(device)
    amp = autocast_dtype(dev, precision)
    model = m2cd.build_model(model_name, **(overrides or {})).to(dev)
    bands = model.config.bands
    gen = torch.Generator().manual_seed(0)
    optical = torch.randn(batch, bands.optical_channels, size, size, generator=gen).to(dev)
    sar = torch.randn(batch, bands.sar_channels, size, size, generator=gen).to(dev)
    label = torch.randint(0, 2, (batch, size, size), generator=gen).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def autocast():
        return torch.autocast(dev.type, dtype=amp) if amp is not None else nullcontext()

    def train_step() -> None:
        model.train()
        with autocast():
            logits, aux = model(optical, sar)
        loss = F.cross_entropy(logits.float(), label) + sum(v.float() for v in aux.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def eval_forward() -> None:
        model.eval()
        with torch.no_grad(), autocast():
            model(optical, sar)

    load_before = os.getloadavg()[0]
    train_s = _median(train_step, dev, repeats, warmup)
    eval_s = _median(eval_forward, dev, repeats, warmup)
    return {
        "model": model_name,
        "overrides": overrides or {},
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision": str(amp).removeprefix("torch.") if amp is not None else "fp32",
        "threads": torch.get_num_threads(),
        "batch": batch,
        "size": size,
        "repeats": repeats,
        "train_pairs_per_s": batch / train_s,
        "eval_pairs_per_s": batch / eval_s,
        "ratio": eval_s / train_s,
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        # an explicit bf16 on a CPU without it in hardware runs emulated: flagged, not hidden
        "emulated_precision": dev.type == "cpu" and amp is not None and not cpu_has_native_bf16(),
        "machine": machine_info(),
    }


def _cpu_name() -> str:
    """The CPU model (figures differ between the AVX2 and AVX-512 development machines)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(r: dict[str, Any]) -> str:
    """Human-readable summary of ``run``'s result."""
    return (
        f"{r['model']} {r['overrides'] or ''} on {r['device']} ({r['threads']} threads, "
        f"{r['precision']}), batch {r['batch']} × {r['size']}², median of {r['repeats']}\n"
        f"train {r['train_pairs_per_s']:.2f} pairs/s, eval {r['eval_pairs_per_s']:.2f} pairs/s, "
        f"ratio {r['ratio']:.2f} (goal ≥ 0.3); load {r['loadavg_1min']}"
    )
