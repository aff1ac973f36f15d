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

Other layouts come in through :meth:`MaskedDoRAExperts.from_packed`'s arguments: biases (``gate_up_bias``
(E, 2I), ``down_bias`` (E, H)), gate and up outputs interleaved per channel (``interleaved``: gate of channel
``c`` at row ``2c``, up at ``2c + 1``, as gpt-oss stores them), and another combination of gate and up
(``glu(gate, up)``, e.g. :class:`ClampedSwiGLU`, :class:`ClampedGLU`). A gated row's bias is gated too, so a
pruned channel's gate and up are both exactly 0, and each ``glu`` here maps (0, 0) to 0. Weights stored
transposed, (E, in, out), are the caller's to pass as ``.transpose(1, 2)``: such a slice is not contiguous, and
it is copied.

The routing (which tokens go to which expert, with which weight) is the caller's: ``forward`` takes the
router's ``top_k_index`` and ``top_k_weights`` and loops over the experts that received a token, as
transformers' eager experts do; an index equal to ``num_experts`` means "no expert" (expert parallelism)
and is skipped. Called with the tokens alone, it takes Llama 4's convention instead: ``hidden_states`` holds
``num_experts`` equal runs of rows, run ``e`` for expert ``e`` (every token, already scaled by its router score
for ``e``, 0 where not routed), and returns each expert's output on its run, in the same order.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .masked_dora_linear import MaskedDoRALinear


def _view_linear(weight: Tensor, bias: Optional[Tensor] = None) -> nn.Linear:
    """An ``nn.Linear`` whose weight (and bias) Parameters share ``weight``'s (``bias``'s) storage; a
    non-contiguous ``weight`` (a transposed slice) is copied."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    linear.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


def _check_activation(act_fn, glu) -> None:
    if (act_fn is None) == (glu is None):
        raise ValueError("act_fn, glu: expected exactly one (act_fn(gate) * up, or glu(gate, up))")


class ClampedSwiGLU(nn.Module):
    r"""``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)`` with ``g = clamp(gate, max=limit)``: the
    experts' gated activation of gpt-oss (alpha 1.702, limit 7). It maps ``gate = up = 0`` (a pruned channel) to
    ``(0 + 1) * 0 * sigmoid(0) = 0`` exactly."""

    def __init__(self, alpha: float, limit: float):
        super().__init__()
        self.alpha, self.limit = float(alpha), float(limit)

    def forward(self, gate: Tensor, up: Tensor) -> Tensor:
        gate = gate.clamp(max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, limit={self.limit}"


class ClampedGLU(nn.Module):
    r"""``act_fn(clamp(gate, max=limit)) * clamp(up, -limit, limit)``: a gated activation whose gate and up are
    clipped first (DeepSeek-V4's experts, SiLU and limit 10); with ``clamp_after_act``, ``clamp(act_fn(gate),
    max=limit) * clamp(up, -limit, limit)``, the activated gate clipped (Step-3.7's experts). A pruned channel
    (``gate = up = 0``) gives ``act_fn(0) * 0 = 0`` exactly, whatever ``act_fn(0)`` is."""

    def __init__(self, act_fn: Callable[[Tensor], Tensor], limit: float, clamp_after_act: bool = False):
        super().__init__()
        self.act_fn, self.limit, self.clamp_after_act = act_fn, float(limit), clamp_after_act

    def forward(self, gate: Tensor, up: Tensor) -> Tensor:
        up = up.clamp(min=-self.limit, max=self.limit)
        if self.clamp_after_act:
            return self.act_fn(gate).clamp(max=self.limit) * up
        return self.act_fn(gate.clamp(max=self.limit)) * up

    def extra_repr(self) -> str:
        return f"limit={self.limit}" + (", clamp_after_act=True" if self.clamp_after_act else "")


class MaskedDoRAExperts(nn.Module):
    """E expert MLPs, each projection a :class:`MaskedDoRALinear` (see the module docstring).

    ``gate_up[e]``: ``2 * intermediate_dim`` outputs (gate rows, then up rows; ``interleaved``: gate and up row
    of each channel in turn); ``down[e]``: ``hidden_dim`` outputs from ``intermediate_dim`` inputs. An expert
    computes ``down[e](glu(gate, up))``, ``glu`` defaulting to ``act_fn(gate) * up``.
    """

    def __init__(self, gate_up: nn.ModuleList, down: nn.ModuleList, act_fn: Optional[Callable[[Tensor], Tensor]],
                 interleaved: bool = False, glu: Optional[Callable[[Tensor, Tensor], Tensor]] = None):
        super().__init__()
        if len(gate_up) != len(down) or len(gate_up) == 0:
            raise ValueError(f"gate_up, down: expected one layer per expert in each, got {len(gate_up)} and "
                             f"{len(down)}")
        for e, (gu, d) in enumerate(zip(gate_up, down)):
            if gu.out_features != 2 * d.in_features or gu.in_features != d.out_features:
                raise ValueError(f"gate_up[{e}], down[{e}]: expected (H -> 2I) and (I -> H), got "
                                 f"({gu.in_features} -> {gu.out_features}) and ({d.in_features} -> {d.out_features})")
        _check_activation(act_fn, glu)
        self.gate_up, self.down, self.act_fn, self.glu = gate_up, down, act_fn, glu
        self.interleaved = bool(interleaved)
        self.num_experts = len(gate_up)
        self.hidden_dim = down[0].out_features
        self.intermediate_dim = down[0].in_features

    @classmethod
    def from_packed(cls, gate_up_proj: Tensor, down_proj: Tensor, act_fn: Optional[Callable[[Tensor], Tensor]],
                    gate_up_bias: Optional[Tensor] = None, down_bias: Optional[Tensor] = None,
                    interleaved: bool = False, glu: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                    **layer_kwargs) -> "MaskedDoRAExperts":
        """Wrap packed expert weights (``(E, 2I, H)`` and ``(E, H, I)``) and biases (``(E, 2I)``, ``(E, H)``),
        shared, not copied (a non-contiguous weight, such as a transposed one, is copied); ``layer_kwargs`` go to
        :meth:`MaskedDoRALinear.from_linear` (rank, alpha, gate, ...)."""
        _check_activation(act_fn, glu)
        for name, w in (("gate_up_proj", gate_up_proj), ("down_proj", down_proj)):
            if not isinstance(w, Tensor) or w.dim() != 3 or not w.is_floating_point():
                raise ValueError(f"{name}: expected a 3-D floating-point tensor (experts, out, in), got "
                                 f"{getattr(w, 'dtype', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}")
        E, two_i, H = gate_up_proj.shape
        if two_i % 2 or down_proj.shape != (E, H, two_i // 2):
            raise ValueError(f"down_proj: expected shape ({E}, {H}, {two_i // 2}) to match gate_up_proj "
                             f"{tuple(gate_up_proj.shape)} (rows [gate | up]), got {tuple(down_proj.shape)}")

        for name, b, rows in (("gate_up_bias", gate_up_bias, two_i), ("down_bias", down_bias, H)):
            if b is not None and tuple(b.shape) != (E, rows):
                raise ValueError(f"{name}: expected shape ({E}, {rows}), got {tuple(b.shape)}")

        def wrap(w, b, e):
            return MaskedDoRALinear.from_linear(_view_linear(w[e], None if b is None else b[e]), **layer_kwargs)

        gate_up = nn.ModuleList(wrap(gate_up_proj, gate_up_bias, e) for e in range(E))
        down = nn.ModuleList(wrap(down_proj, down_bias, e) for e in range(E))
        return cls(gate_up, down, act_fn, interleaved=interleaved, glu=glu)

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on the rows ``x`` routed to it."""
        gate_up = self.gate_up[e](x)
        if self.interleaved:
            gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
        else:
            gate, up = gate_up.chunk(2, dim=-1)
        return self.down[e](self.act_fn(gate) * up if self.glu is None else self.glu(gate, up))

    def forward(self, hidden_states: Tensor, top_k_index: Optional[Tensor] = None,
                top_k_weights: Optional[Tensor] = None) -> Tensor:
        routed = top_k_index is not None and hidden_states.dim() > 2
        if routed and hidden_states.shape[-1] == self.hidden_dim:  # (batch, seq, H) with (batch * seq, k) routing
            # (DBRX's experts take the block's tokens unflattened and return them so)
            return self(hidden_states.reshape(-1, self.hidden_dim), top_k_index, top_k_weights).view_as(hidden_states)
        if hidden_states.dim() != 2 or hidden_states.shape[-1] != self.hidden_dim:
            raise ValueError(f"hidden_states: expected (tokens, {self.hidden_dim}), got {tuple(hidden_states.shape)}")
        if top_k_index is None and top_k_weights is None:  # one run of rows per expert (Llama 4)
            if hidden_states.shape[0] % self.num_experts:
                raise ValueError(f"hidden_states: without top_k_index, expected {self.num_experts} equal runs of rows "
                                 f"(one per expert), got {hidden_states.shape[0]} rows")
            runs = hidden_states.view(self.num_experts, -1, self.hidden_dim)
            return torch.cat([self.expert(e, runs[e]) for e in range(self.num_experts)])
        if top_k_index is None or top_k_weights is None:
            raise ValueError("top_k_index, top_k_weights: expected both (the router's choice) or neither")
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
        return (f"num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, "
                f"intermediate_dim={self.intermediate_dim}"
                + (", interleaved=True" if self.interleaved else ""))
