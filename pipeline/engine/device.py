"""One device and precision rule for inference and training (a model trains as it will run).

Devices: `auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N`. Precision: an explicit
`fp32|bf16|fp16` is honoured; `auto` is bf16 on CUDA where supported (else fp16) and, on a CPU,
bf16 only where the CPU computes it natively (AVX512_BF16 or AMX): elsewhere CPU bf16 is emulated
and slower than fp32, so `auto` stays fp32 there.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

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


class CpuIsa(BaseModel):
    """The CPU features the fast-path choices depend on (from /proc/cpuinfo and torch)."""

    model_config = ConfigDict(frozen=True)

    torch_capability: str  # the kernels torch dispatches to: DEFAULT, AVX2, AVX512, ...
    avx2: bool = False
    avx512: bool = False
    avx512_bf16: bool = False
    amx_bf16: bool = False

    @property
    def native_bf16(self) -> bool:
        """bf16 in hardware *and* torch dispatching the kernels that use it (AVX-512 or AMX).

        Elsewhere torch emulates bf16 in fp32 with conversions: slower than fp32 (the AVX2-only
        EPYC took 15 min for `bench model`, most of it in emulated bf16).
        """
        kernels = self.torch_capability.upper().startswith(("AVX512", "AMX"))
        return kernels and (self.avx512_bf16 or self.amx_bf16)


def _cpu_flags() -> set[str] | None:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


@lru_cache(maxsize=1)
def detect_cpu_isa() -> CpuIsa:
    """This machine's CpuIsa (cached: it does not change while the process runs)."""
    capability = str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")())
    flags = _cpu_flags()
    if flags is None:  # no /proc/cpuinfo (macOS, Windows): what torch itself reports
        cpu = getattr(torch, "cpu", None)
        bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
        amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
        return CpuIsa(
            torch_capability=capability,
            avx2=capability.upper() in {"AVX2", "AVX512", "AMX"},
            avx512=capability.upper().startswith("AVX512"),
            avx512_bf16=bf16,
            amx_bf16=amx,
        )
    return CpuIsa(
        torch_capability=capability,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        avx512_bf16="avx512_bf16" in flags,
        amx_bf16="amx_bf16" in flags,
    )


def cpu_has_native_bf16(isa: CpuIsa | None = None) -> bool:
    """True where the CPU computes bf16 in hardware (AVX512_BF16 or AMX) and torch uses it."""
    return (isa or detect_cpu_isa()).native_bf16


def autocast_dtype(
    device: torch.device,
    precision: str,
    isa: CpuIsa | None = None,
    cuda_bf16: bool | None = None,
) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32 (see module doc).

    `isa` and `cuda_bf16` default to this machine's; tests inject them to cover every branch.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16(isa) else None


def slow_on_cpu(device: torch.device, precision: str) -> bool:
    """fp16, or bf16 without native kernels, on a CPU: ~10× slower than fp32 (measured with
    `m2cd bench model` on the AVX2 dev CPU); detect and train warn on it."""
    return device.type == "cpu" and (
        precision == "fp16" or (precision == "bf16" and not cpu_has_native_bf16())
    )
