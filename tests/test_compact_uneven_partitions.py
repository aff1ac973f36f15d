"""compact_model on masks that keep a different count in the partitions of a group (before harden: the learned
gates' decision) must refuse, not compact silently to a wrong model. The compacted attention splits its heads
evenly: query heads into KV groups (gqa="query_heads"), a "chunked" qkv into its chunks (CodeGen's mp_num=4);
a KV group keeping 0 heads and another 2 compacted to a model that differed from the masked one by 0.15 (Llama)
and 0.46 (CodeGen). harden keeps the same count in each partition, so hardened masks compact as before."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_model, get_state, harden, prepare_model

from tiny_models import output_tensor, randomize_adapters, tiny_inputs, tiny_model


def _codegen8():
    import transformers as t

    config = t.CodeGenConfig(vocab_size=97, n_embd=64, n_layer=2, n_head=8, n_inner=64, n_positions=64,
                             rotary_dim=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return t.CodeGenForCausalLM(config).eval()


@pytest.mark.parametrize("family", ["llama", "codegen"])
def test_compact_model_refuses_uneven_partitions_and_compacts_after_harden(family):
    torch.manual_seed(0)
    model = _codegen8() if family == "codegen" else tiny_model("llama", kind="lm")
    gqa = {"gqa": "query_heads"} if family == "llama" else {}
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                                          **gqa))
    randomize_adapters(model)
    group = get_state(model).group("heads", 0)
    with torch.no_grad():  # the last units win: the first partitions keep none, the last ones all
        group.mask_logits.copy_(torch.linspace(-1.0, 1.0, group.num_units))
    model.eval()
    counts = group.hard().view(group.partitions, -1).sum(1)
    assert group.partitions > 1 and len(set(counts.tolist())) > 1
    with pytest.raises(RuntimeError, match=r"heads_0 keeps \[.*\] query heads in its \d+ KV groups.*harden"):
        compact_model(model)
    harden(model)
    inputs = tiny_inputs(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(compact_model(model)(**inputs)), output_tensor(model(**inputs)),
                                   rtol=1e-4, atol=1e-5)
