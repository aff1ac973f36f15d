"""The language models of VLMs that transformers also ships as causal LMs of their own (Aria's ``aria_text``:
``AriaTextForCausalLM``; Emu3's ``emu3_text_model``: ``Emu3ForCausalLM``) prune alone with the spec their VLM
wraps: prepare → harden → compact (equal logits) → save → ``load_compact`` (equal logits and ``generate()``
tokens)."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_model, get_state, harden, load_compact, prepare_model,
                                spec_for)

from helpers import rel_err
from tiny_models import randomize_adapters
from tiny_vlm_configs import TEXT
from tiny_vlms import available, unavailable_reason

TEXT_MODELS = {  # causal LM class: (config class, its config's keys besides TEXT)
    "AriaTextForCausalLM": ("AriaTextConfig", dict(head_dim=8, moe_num_experts=4, moe_topk=2,
                                                   moe_num_shared_experts=1)),
    "Emu3ForCausalLM": ("Emu3TextConfig", dict(head_dim=8, attention_dropout=0.0)),
}


@pytest.mark.parametrize("causal_lm", sorted(TEXT_MODELS))
def test_vlm_language_model_prunes_alone(causal_lm, tmp_path):
    import transformers

    config_class, keys = TEXT_MODELS[causal_lm]
    if not hasattr(transformers, causal_lm):
        pytest.skip(f"this transformers has no {causal_lm}")
    if causal_lm == "AriaTextForCausalLM" and not available("aria"):  # (the VLM's layout, its version)
        pytest.skip(unavailable_reason("aria"))
    torch.manual_seed(0)
    model = getattr(transformers, causal_lm)(getattr(transformers, config_class)(**TEXT, **keys)).eval()
    assert spec_for(model).name == model.config.model_type  # the VLM's inner spec, unwrapped
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    randomize_adapters(model)
    harden(model)
    ids = torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        small = compact_model(model)
        assert rel_err(small(input_ids=ids).logits, ref) < 1e-5
    small.save_pretrained(str(tmp_path))
    reloaded = load_compact(str(tmp_path))
    with torch.no_grad():
        assert rel_err(reloaded(input_ids=ids).logits, ref) < 1e-5
    gen = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(input_ids=ids[:1], **gen), model.generate(input_ids=ids[:1], **gen))


@pytest.mark.parametrize("gqa, allocation", [("kv_groups", "uniform"), ("query_heads", "global")])
def test_minimax_m3_sparse_layers_keep_their_heads_whole(gqa, allocation, tmp_path):
    """MiniMax-M3's "minimax_m3_sparse" layers: the indexer picks key blocks per KV group (index_n_heads), and its
    mask hands them to the query heads by config.num_attention_heads // index_n_heads. Pruned there, a kept KV group
    got another group's blocks (gqa='kv_groups': a 15% error), or the mask the unpruned head count (per-layer
    sizes: the forward failed). Those layers keep their heads whole, the full-attention ones prune; equal logits
    after compaction and load_compact, with an indexer whose choice matters (3 of 6 key blocks)."""
    import transformers

    from tiny_families_vlm_text import TINY

    if not hasattr(transformers, "MiniMaxM3VLForCausalLM"):
        pytest.skip("this transformers has no MiniMaxM3VLForCausalLM")
    config = transformers.MiniMaxM3VLTextConfig(**dict(TINY["minimax_m3_vl_text"].config, index_topk_blocks=3))
    torch.manual_seed(0)
    model = transformers.MiniMaxM3VLForCausalLM(config).eval()
    prepare_model(model, MaskedDoRAConfig(target_groups=("heads",), rank=4, importance="none", target_sparsity=0.5,
                                          gqa=gqa, allocation=allocation))
    assert sorted(get_state(model).groups) == ["heads_1"]  # block 1 (full attention) alone
    vlm = transformers.MiniMaxM3VLConfig(text_config=config.to_dict())  # (the VLM wraps the same refusal)
    assert spec_for(vlm).block_refusals == spec_for(config).block_refusals != ()
    randomize_adapters(model)
    with torch.no_grad():  # the last heads kept (a kept group read by index head 0 would not pass)
        for group in get_state(model).groups_of("heads"):
            group.mask_logits.copy_(torch.linspace(-1.0, 1.0, group.num_units))
    harden(model)
    ids = torch.randint(3, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        small = compact_model(model)
        assert rel_err(small(input_ids=ids).logits, ref) < 1e-5
    assert small.model.layers[1].self_attn.q_proj.out_features == 16
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        assert rel_err(load_compact(str(tmp_path))(input_ids=ids).logits, ref) < 1e-5
