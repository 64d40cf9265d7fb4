"""One device and precision rule for inference and training (a model trains as it will run).

Devices: `auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N`. Precision: an explicit
`fp32|bf16|fp16` is honoured; `auto` is bf16 on CUDA where supported (else fp16) and, on a CPU,
bf16 only where the CPU computes it natively (AVX512_BF16 or AMX): elsewhere CPU bf16 is emulated
and slower than fp32, so `auto` stays fp32 there.
"""

from __future__ import annotations

import re

import torch

from pipeline.errors import ConfigError

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(name: str, field: str = "device") -> torch.device:
    """The torch device for a config value; a GPU that is not there is a ConfigError naming
    `field`, before any input is read."""
    if not _DEVICE.fullmatch(name):
        raise ConfigError(f"{field}: {name!r} is not one of auto, cpu, cuda, cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{field}: {name} was asked for but no CUDA device is available")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"{field}: {name} was asked for but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512_BF16 or AMX)."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    native = getattr(getattr(torch, "cpu", None), "_is_avx512_bf16_supported", lambda: False)()
    return capability in {"AVX512", "AMX"} and bool(native)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32 (see module doc)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
