"""`precision: auto` picks what is fast on the machine it runs on: every branch, with the
capabilities injected (the answer must not depend on the CPU the tests happen to run on)."""

from __future__ import annotations

import pytest
import torch

from pipeline.engine.device import CpuIsa, autocast_dtype, detect_cpu_isa

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AVX2_EPYC = CpuIsa(torch_capability="AVX2", avx2=True)
AVX512_NO_BF16 = CpuIsa(torch_capability="AVX512", avx2=True, avx512=True)
AVX512_BF16 = CpuIsa(torch_capability="AVX512", avx2=True, avx512=True, avx512_bf16=True)
SAPPHIRE_RAPIDS = CpuIsa(
    torch_capability="AVX512", avx2=True, avx512=True, avx512_bf16=True, amx_bf16=True
)
# bf16 in hardware, but torch held at AVX2 kernels (ATEN_CPU_CAPABILITY=avx2): emulated again
BF16_UNDER_AVX2_KERNELS = CpuIsa(
    torch_capability="AVX2", avx2=True, avx512=True, avx512_bf16=True, amx_bf16=True
)


@pytest.mark.parametrize(
    ("isa", "expected"),
    [
        (AVX2_EPYC, None),
        (AVX512_NO_BF16, None),
        (AVX512_BF16, torch.bfloat16),
        (SAPPHIRE_RAPIDS, torch.bfloat16),
        (BF16_UNDER_AVX2_KERNELS, None),
    ],
)
def test_auto_precision_on_a_cpu_is_bf16_only_where_it_is_native(isa, expected):
    assert autocast_dtype(CPU, "auto", isa=isa) is expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_on_a_gpu_is_bf16_where_supported_else_fp16(bf16, expected):
    assert autocast_dtype(CUDA, "auto", cuda_bf16=bf16) is expected


@pytest.mark.parametrize("isa", [AVX2_EPYC, SAPPHIRE_RAPIDS])
def test_an_explicit_precision_is_honoured_whatever_the_cpu(isa):
    assert autocast_dtype(CPU, "fp32", isa=isa) is None
    assert autocast_dtype(CPU, "bf16", isa=isa) is torch.bfloat16
    assert autocast_dtype(CPU, "fp16", isa=isa) is torch.float16


def test_this_machine_is_described_consistently_with_torch():
    isa = detect_cpu_isa()
    assert isa.torch_capability == torch.backends.cpu.get_cpu_capability()
    if isa.torch_capability.startswith("AVX512"):
        assert isa.avx512 and isa.avx2
    assert autocast_dtype(CPU, "auto") is (torch.bfloat16 if isa.native_bf16 else None)
