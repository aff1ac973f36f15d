"""The residual stream of a family, for ``"hidden"`` pruning: :class:`HiddenSpec` (``hidden_mode="global"``) and
:class:`PerBlockHiddenSpec` (``hidden_mode="per_block"``); part of the declarative specs
(:mod:`masked_dora.models.specs`), kept apart so that module stays a table of families."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class HiddenSpec:
    """The residual stream of an RMSNorm decoder family, for ``"hidden"`` pruning (``hidden_mode="global"``).

    Its writers are the embeddings, the heads' ``output`` and the MLP's ``consumer`` (gated rows); its
    readers the q/k/v and MLP producers (and the LM head), whose input columns go at compaction; ``norms``
    (paths relative to a block) and ``final_norm`` (relative to the module holding the block list) are the
    RMSNorms over it, with epsilon in the config key ``eps_key`` (and, in each norm module built from it, the
    attribute ``eps_attr``). ``model_types``: the types of the spec checked
    exact (the rest of the spec's types are refused with ``refusals[model_type]``, or a generic reason).
    """

    norms: Tuple[str, ...]
    final_norm: str
    eps_key: str
    model_types: Tuple[str, ...]
    refusals: Tuple[Tuple[str, str], ...] = ()
    eps_attr: str = "variance_epsilon"

    def refusal(self, model_type: str) -> Optional[str]:
        if model_type in self.model_types:
            return None
        return dict(self.refusals).get(model_type, f"hidden-dimension pruning is checked exact for the model types "
                                                   f"{self.model_types} of this spec, not {model_type!r}")


HIDDEN_UNCOVERED = ("hidden-dimension pruning (hidden_mode='global') is built for RMSNorm decoders whose residual "
                    "stream only the embeddings, the attention output and the MLP output write (Llama, Mistral, "
                    "Qwen2); this family has no HiddenSpec (a LayerNorm family cannot be exact: a zero channel "
                    "changes the mean the norm subtracts)")


_GEMMA_HIDDEN = ("its embeddings are multiplied by sqrt(hidden_size), a constant the compacted config would "
                 "recompute as sqrt(d') (not folded), and its RMSNorm scales by (1 + weight)")
LLAMA_HIDDEN = HiddenSpec(
    norms=("input_layernorm", "post_attention_layernorm"), final_norm="norm", eps_key="rms_norm_eps",
    model_types=("llama", "mistral", "qwen2"),
    refusals=(("gemma", _GEMMA_HIDDEN),
              ("gemma2", _GEMMA_HIDDEN + "; its post-norms on the attention and MLP outputs are not covered"),
              ("gemma3_text", _GEMMA_HIDDEN + "; its post-norms on the attention and MLP outputs are not covered"),
              ("granite", "its compacted model did not equal the masked one in a check (its embedding/residual/"
                          "logit multipliers are not covered)"),
              ("qwen3", "its per-head q/k RMSNorms read the same rms_norm_eps, which the compacted config must "
                        "scale by d/d' for the residual-stream norms, so they would change")))


@dataclass(frozen=True)
class PerBlockHiddenSpec:
    """Where a block reads the residual stream, for ``hidden_mode="per_block"`` (paths relative to a block).

    ``attention_input``/``mlp_input``: the module whose input (its first positional argument, or the keyword
    ``hidden_states``) only the attention's q/k/v (only the MLP's producers) read, and nothing else but its
    shape: the block's mask gates (after compaction: gathers) that one tensor, once for all its readers. The
    writers are the heads' ``output`` and the MLP's ``consumer`` (their output rows are gated, and compacted to
    :class:`~masked_dora.nn.CompactLinear` layers scattering into the full-width stream). ``model_types``: the
    types checked exact (masked == compacted, save -> ``load_compact``, ``generate()``).
    """

    attention_input: str
    mlp_input: str
    model_types: Tuple[str, ...]

    def refusal(self, model_type: str) -> Optional[str]:
        if model_type in self.model_types:
            return None
        return f"it is checked exact for the model types {self.model_types} of this spec, not {model_type!r}"


PER_BLOCK_UNCOVERED = ("this family has no PerBlockHiddenSpec (the module of each block whose input only q/k/v "
                       "read, and the one whose input only the MLP's producers read; built for the Llama and BERT "
                       "specs)")

# pre-norm decoders: the decoder layer keeps the residual, then self_attn(hidden_states=norm(x)) and mlp(norm(h))
LLAMA_PER_BLOCK = PerBlockHiddenSpec(attention_input="self_attn", mlp_input="mlp",
                                     model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
                                                  "gemma3_text", "granite"))
# post-LN encoders: attention.self reads the block input (the residual stream: the last block's LayerNorm output,
# which BertAttention also passes to attention.output as the residual), intermediate the first LayerNorm's output
BERT_PER_BLOCK = PerBlockHiddenSpec(attention_input="attention.self", mlp_input="intermediate",
                                    model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert",
                                                 "data2vec-text"))
# pre-LN XLM-R XL: attention.self reads self_attn_layer_norm(x), intermediate the block's LayerNorm(h) (the residual
# goes to attention.output and output as their input_tensor)
XLMR_XL_PER_BLOCK = PerBlockHiddenSpec(attention_input="attention.self", mlp_input="intermediate",
                                       model_types=("xlm-roberta-xl",))
DISTILBERT_PER_BLOCK = PerBlockHiddenSpec(attention_input="attention", mlp_input="ffn", model_types=("distilbert",))
