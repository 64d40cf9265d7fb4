"""Sparse Mixture-of-Experts FFN of spec §4 with a dense, fixed-shape dispatch.

Why dense: the official SparseDispatcher gathers tokens per expert, which needs per-expert counts on
the host (a GPU→CPU sync per call) and data-dependent shapes (no torch.export, no CUDA graphs). Here
every expert's first layer runs as ONE matmul C→E·mid, the second as one batched matmul, and the
outputs are summed with the (sparse) gates as weights. Unselected experts get gate 0, so values and
gradients equal the sparse formulation; the price is E/k× the expert FLOPs (2× for 4 experts, top-2:
M²CD-b1 at 256² executes 19.6 GFLOP/pair instead of 14.6), paid back by large GEMMs instead of 2E
small ragged ones, no gather/scatter copies and zero host synchronisation. A sparse path would need
a grouped GEMM (not available on CPU) or per-expert counts on the host. Three orders of the same
sum: ``experts_forward_flat`` (autograd: training), ``experts_forward_chunked`` (CPU inference),
``experts_forward`` (GPU inference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation with the unbiased variance (0 for a single expert)."""
    x = x.float()
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var(unbiased=True) / (x.mean() ** 2 + 1e-10)


class CosineRouter(nn.Module):
    """Cosine similarity between a projection of the token and learnable expert embeddings."""

    def __init__(self, dim: int, experts: int, init_t: float = 0.5):
        super().__init__()
        proj_dim = min(dim // 2, 256)
        self.temperature = nn.Parameter(torch.log(torch.full([1], 1.0 / init_t)))
        self.cosine_projector = nn.Linear(dim, proj_dim)
        self.sim_matrix = nn.Parameter(torch.empty(proj_dim, experts))
        nn.init.normal_(self.sim_matrix, 0, 0.01)
        self.clamp_max = math.log(100.0)

    def forward(self, x: Tensor) -> Tensor:
        """Router logits: cosine similarity of tokens to expert embeddings (scale-free routing)."""
        proj = F.normalize(self.cosine_projector(x), dim=1)
        logits = proj @ F.normalize(self.sim_matrix, dim=0)
        return logits * torch.clamp(self.temperature, max=self.clamp_max).exp()


class MoE(nn.Module):
    """E experts (C→mid→C, GELU), top-k cosine routing; output replaces the input (no residual).

    ``forward(x)`` takes N×C×H×W and returns ``(y, balance_loss)``; the loss is None in eval mode
    (nobody uses it there, and skipping it keeps inference free of the statistics).
    """

    def __init__(
        self,
        dim: int,
        experts: int = 4,
        top_k: int = 2,
        mid_ratio: int = 4,
        noisy_gating: bool = True,
        balance_weight: float = 0.01,
    ):
        super().__init__()
        self.dim, self.experts, self.top_k = dim, experts, top_k
        self.mid = mid_ratio * dim
        self.noisy_gating = noisy_gating
        self.balance_weight = balance_weight
        # Stacked expert weights, laid out as nn.Linear's (out, in) per expert.
        self.fc1_weight = nn.Parameter(torch.empty(experts, self.mid, dim))
        self.fc1_bias = nn.Parameter(torch.empty(experts, self.mid))
        self.fc2_weight = nn.Parameter(torch.empty(experts, dim, self.mid))
        self.fc2_bias = nn.Parameter(torch.empty(experts, dim))
        self.router = CosineRouter(dim, experts)
        self.w_noise = nn.Parameter(torch.zeros(dim, experts))
        self.reset_expert_parameters()
        # Hidden-activation bytes per chunk of the CPU inference path: 8 MiB stays in the L3
        # cache, while the GEMMs stay large and the chunks few (each op of a chunk is a parallel
        # region ending in a thread barrier, which stalls when another process takes a core).
        self.cpu_chunk_bytes = 8 << 20
        self.cpu_chunk_min_rows = 1024  # smaller chunks gained nothing for wide C (stages 3-4)
        # True: the sparse reference order (FLOP counting and tests only, see experts_reference).
        self.reference = False

    def reset_expert_parameters(self) -> None:
        """PyTorch's nn.Linear default init, per expert (what the official plain modules get)."""
        for w, b in ((self.fc1_weight, self.fc1_bias), (self.fc2_weight, self.fc2_bias)):
            bound = 1.0 / math.sqrt(w.shape[-1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def gating(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """Dense T×E gates (k non-zeros per row) and, in training, the balance loss."""
        clean = self.router(tokens)
        noisy_train = self.training and self.noisy_gating and self.top_k < self.experts
        if noisy_train:
            noise_std = F.softplus(tokens @ self.w_noise) + 1e-2
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        m = min(self.top_k + 1, self.experts)
        top_vals, top_idx = logits.topk(m, dim=-1)
        top_gates = torch.softmax(top_vals[:, : self.top_k], dim=-1)
        gates = torch.zeros_like(logits).scatter(-1, top_idx[:, : self.top_k], top_gates)
        if not self.training:
            return gates, None
        importance = gates.sum(0)
        if noisy_train:
            # Smooth load estimator (Shazeer et al. 2017): P(expert stays in the top-k under noise).
            thr_in = top_vals[:, self.top_k : self.top_k + 1]
            thr_out = top_vals[:, self.top_k - 1 : self.top_k]
            # ndtr = standard normal CDF (a Normal distribution object would validate = host sync)
            p_in = torch.special.ndtr((clean - thr_in) / noise_std)
            p_out = torch.special.ndtr((clean - thr_out) / noise_std)
            load = torch.where(logits > thr_in, p_in, p_out).sum(0)
        else:
            load = (gates > 0).sum(0).to(logits.dtype)
        loss = self.balance_weight * (cv_squared(importance) + cv_squared(load))
        return gates, loss

    def experts_forward(self, tokens: Tensor, gates: Tensor) -> Tensor:
        """Σ_e g_e·FFN_e(x) for all tokens.

        One GEMM for every expert's first layer, one batched GEMM for the second, then the
        gate-weighted sum over the E×T×C outputs (4× less memory traffic than weighting the
        E×T×mid hidden activations).
        """
        t, c = tokens.shape
        e, mid = self.experts, self.mid
        hidden = F.linear(
            tokens, self.fc1_weight.reshape(e * mid, c), self.fc1_bias.reshape(e * mid)
        )
        hidden = F.gelu(hidden).view(t, e, mid).transpose(0, 1)  # E×T×mid view, no copy
        w2 = self.fc2_weight.transpose(1, 2).to(hidden.dtype)
        out = torch.baddbmm(self.fc2_bias.unsqueeze(1).to(hidden.dtype), hidden, w2)
        return (out * gates.to(out.dtype).t().unsqueeze(-1)).sum(0)

    def experts_forward_flat(self, tokens: Tensor, gates: Tensor) -> Tensor:
        """Σ_e g_e·FFN_e(x) as two plain GEMMs (the autograd path: training).

        The gates scale each expert's hidden units, so the second layer is one T×(E·mid) by
        (E·mid)×C matmul plus Σ_e g_e·b2_e, the order of the chunked inference path but
        differentiable. Why not ``experts_forward``'s batched GEMM: its E×T×mid operand is a
        transposed view, and backward copies it to contiguous memory for the weight gradient
        (stage 1 of MiT-b0 at batch 16 of 128²: 248 of 2,040 ms of a CPU training step went to
        that copy). Same values up to float rounding.
        """
        t, c = tokens.shape
        e, mid = self.experts, self.mid
        hidden = F.linear(
            tokens, self.fc1_weight.reshape(e * mid, c), self.fc1_bias.reshape(e * mid)
        )
        hidden = F.gelu(hidden)
        scaled = (hidden.view(t, e, mid) * gates.to(hidden.dtype).unsqueeze(-1)).view(t, e * mid)
        w2 = self.fc2_weight.permute(1, 0, 2).reshape(c, e * mid)  # C×(E·mid): tiny copy
        bias = gates.to(scaled.dtype) @ self.fc2_bias.to(scaled.dtype)  # T×C: Σ_e g_e·b2_e
        return torch.addmm(bias, scaled, w2.t().to(scaled.dtype))

    def experts_forward_chunked(self, tokens: Tensor, gates: Tensor, chunk: int) -> Tensor:
        """Σ_e g_e·FFN_e(x), ``chunk`` tokens at a time (CPU inference).

        Why: with small C and many tokens the dense path is memory-bound: the T×E·mid hidden
        activations (256 MiB for stage 1 of MiT-b1 at batch 8) go to DRAM three times (GEMM out,
        GELU, batched-GEMM in). Per chunk they stay in cache: GEMM → GELU → gate scaling → one GEMM
        whose K runs over all experts' hidden units, so Σ_e g_e·h_e·W2_eᵀ is a single matmul and
        the gate-weighted biases are added as Σ_e g_e·b2_e. Same values up to float rounding.
        """
        t, c = tokens.shape
        e, mid = self.experts, self.mid
        # out= and in-place ops bypass autocast: cast once to the dtype autocast would use.
        dt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else tokens.dtype
        tokens, gates = tokens.to(dt), gates.to(dt)
        w1 = self.fc1_weight.reshape(e * mid, c).t().to(dt)
        b1 = self.fc1_bias.reshape(e * mid).to(dt)
        w2 = self.fc2_weight.transpose(1, 2).reshape(e * mid, c).to(dt)
        bias = gates @ self.fc2_bias.to(dt)  # T×C: Σ_e g_e·b2_e
        out = torch.empty_like(bias)
        hidden = tokens.new_empty(min(chunk, t), e * mid)  # reused: no page faults per chunk
        for start in range(0, t, chunk):
            stop = min(start + chunk, t)
            h = hidden[: stop - start]
            torch.addmm(b1, tokens[start:stop], w1, out=h)
            torch.ops.aten.gelu_(h)
            h.view(-1, e, mid).mul_(gates[start:stop].unsqueeze(-1))
            # out= rather than an in-place addmm_: FlopCounterMode counts addmm, not addmm_.
            torch.addmm(bias[start:stop], h, w2, out=out[start:stop])
        return out

    def experts_reference(self, tokens: Tensor, gates: Tensor) -> Tensor:
        """The official sparse order: each expert runs only on the tokens routed to it.

        Data-dependent shapes and a host sync per expert: used to count the FLOPs the
        architecture needs (``m2cd bench model``) and to test the fast paths, never in forward.
        """
        out = torch.zeros_like(tokens)
        for e in range(self.experts):
            idx = (gates[:, e] > 0).nonzero().squeeze(1)
            x = tokens.index_select(0, idx)
            h = F.gelu(F.linear(x, self.fc1_weight[e], self.fc1_bias[e]))
            y = F.linear(h, self.fc2_weight[e], self.fc2_bias[e])
            out.index_add_(0, idx, y * gates.index_select(0, idx)[:, e : e + 1])
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Tokens through their top-k experts: (output, balance loss or None) for the training step."""
        n, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view when x is channels_last
        gates, loss = self.gating(tokens)
        if self.reference:
            y = self.experts_reference(tokens, gates)
        elif torch.is_grad_enabled():
            y = self.experts_forward_flat(tokens, gates)
        elif x.device.type == "cpu":
            rows = self.cpu_chunk_bytes // (self.experts * self.mid * tokens.element_size())
            y = self.experts_forward_chunked(tokens, gates, max(self.cpu_chunk_min_rows, rows))
        else:
            y = self.experts_forward(tokens, gates)
        return y.view(n, h, w, c).permute(0, 3, 1, 2), loss
