r"""``MaskedDoRAExperts``: a mixture-of-experts MLP whose every expert projection is a masked-DoRA layer.

Expert ``e`` maps the tokens routed to it as a gated MLP,

    ``y_e = D_e(act(G_e x) * (U_e x))``,  ``[G_e | U_e] = gate_up_proj[e]`` (rows: gate, then up),

and the block returns ``sum over the token's top-k experts of w_k * y_e``. The experts' weights come
packed, ``gate_up_proj`` of shape (E, 2I, H) and ``down_proj`` (E, H, I) (how transformers 5 stores
Mixtral's and Qwen3-MoE's experts). Here every ``gate_up_proj[e]`` and ``down_proj[e]`` becomes a
:class:`MaskedDoRALinear` (``gate_up[e]``, ``down[e]``) whose frozen weight *is* that slice of the packed
tensor (a view: no copy), with its own adapter and magnitude, so a gate on the rows of ``gate_up[e]``
prunes channels of expert ``e`` exactly: ``act(0) * 0 = 0`` at the input of ``D_e``. (The layer lists are
not named after the packed parameters: transformers' save-time conversion matches those names and would
take the layers for packed experts.)

The routing (which tokens go to which expert, with which weight) is the caller's: ``forward`` takes the
router's ``top_k_index`` and ``top_k_weights`` and loops over the experts that received a token, as
transformers' eager experts do; an index equal to ``num_experts`` means "no expert" (expert parallelism)
and is skipped.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .masked_dora_linear import MaskedDoRALinear


def _view_linear(weight: Tensor) -> nn.Linear:
    """An ``nn.Linear`` (no bias) whose weight Parameter shares ``weight``'s storage."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta", dtype=weight.dtype)
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return linear


class MaskedDoRAExperts(nn.Module):
    """E expert MLPs, each projection a :class:`MaskedDoRALinear` (see the module docstring).

    ``gate_up[e]``: ``2 * intermediate_dim`` outputs (gate rows, then up rows);
    ``down[e]``: ``hidden_dim`` outputs from ``intermediate_dim`` inputs.
    """

    def __init__(self, gate_up: nn.ModuleList, down: nn.ModuleList, act_fn: Callable[[Tensor], Tensor]):
        super().__init__()
        if len(gate_up) != len(down) or len(gate_up) == 0:
            raise ValueError(f"gate_up, down: expected one layer per expert in each, got {len(gate_up)} and "
                             f"{len(down)}")
        for e, (gu, d) in enumerate(zip(gate_up, down)):
            if gu.out_features != 2 * d.in_features or gu.in_features != d.out_features:
                raise ValueError(f"gate_up[{e}], down[{e}]: expected (H -> 2I) and (I -> H), got "
                                 f"({gu.in_features} -> {gu.out_features}) and ({d.in_features} -> {d.out_features})")
        self.gate_up, self.down, self.act_fn = gate_up, down, act_fn
        self.num_experts = len(gate_up)
        self.hidden_dim = down[0].out_features
        self.intermediate_dim = down[0].in_features

    @classmethod
    def from_packed(cls, gate_up_proj: Tensor, down_proj: Tensor, act_fn: Callable[[Tensor], Tensor],
                    **layer_kwargs) -> "MaskedDoRAExperts":
        """Wrap packed expert weights (``(E, 2I, H)`` and ``(E, H, I)``), shared, not copied; ``layer_kwargs``
        go to :meth:`MaskedDoRALinear.from_linear` (rank, alpha, gate, ...)."""
        for name, w in (("gate_up_proj", gate_up_proj), ("down_proj", down_proj)):
            if not isinstance(w, Tensor) or w.dim() != 3 or not w.is_floating_point():
                raise ValueError(f"{name}: expected a 3-D floating-point tensor (experts, out, in), got "
                                 f"{getattr(w, 'dtype', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}")
        E, two_i, H = gate_up_proj.shape
        if two_i % 2 or down_proj.shape != (E, H, two_i // 2):
            raise ValueError(f"down_proj: expected shape ({E}, {H}, {two_i // 2}) to match gate_up_proj "
                             f"{tuple(gate_up_proj.shape)} (rows [gate | up]), got {tuple(down_proj.shape)}")

        def wrap(w):
            return MaskedDoRALinear.from_linear(_view_linear(w), **layer_kwargs)

        gate_up = nn.ModuleList(wrap(gate_up_proj[e]) for e in range(E))
        down = nn.ModuleList(wrap(down_proj[e]) for e in range(E))
        return cls(gate_up, down, act_fn)

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on the rows ``x`` routed to it."""
        gate, up = self.gate_up[e](x).chunk(2, dim=-1)
        return self.down[e](self.act_fn(gate) * up)

    def forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        if hidden_states.dim() != 2 or hidden_states.shape[-1] != self.hidden_dim:
            raise ValueError(f"hidden_states: expected (tokens, {self.hidden_dim}), got {tuple(hidden_states.shape)}")
        if top_k_index.shape != top_k_weights.shape or top_k_index.shape[0] != hidden_states.shape[0]:
            raise ValueError(f"top_k_index, top_k_weights: expected equal shapes (tokens, k), got "
                             f"{tuple(top_k_index.shape)} and {tuple(top_k_weights.shape)}")
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            routed = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(routed.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
        for e in hit:
            if e == self.num_experts:  # routed to no local expert
                continue
            k_pos, tokens = torch.where(routed[e])
            y = self.expert(e, hidden_states[tokens]) * top_k_weights[tokens, k_pos, None]
            out.index_add_(0, tokens, y.to(out.dtype))
        return out

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, intermediate_dim={self.intermediate_dim}"
