"""A recovery step at the kept size (compact_for_training) against the full-width masked step (issue 16).

After ``harden`` the masks are fixed; the full-width step still multiplies the pruned rows and columns
(exact zeros). ``compact_for_training`` drops them in place. One training step here is forward, backward
and an AdamW step of ``train_masked``'s recovery phase (adapters only; ``sparsity_penalty=False``), fp32:

* ``minilm``: the demo's model shape (all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads, MLP 1536),
  batch 16 x 128 tokens, random weights;
* ``llama``: a Llama-shaped decoder (hidden 1024, 16 heads / 4 KV heads, MLP 2816, 4 layers,
  vocabulary 8000), batch 2 x 512 tokens, a language-modelling loss, random weights.

``test_recovery_step_hidden``: the ``llama`` model with its residual stream pruned too (``hidden_mode="global"``,
25% of MLP channels, heads and hidden channels), where ``compact_for_training`` also narrows the embeddings,
the norms, every reader and writer, and the LM head's input.

MLP channels and heads are pruned at 25% and 50%, with the defaults (``gqa="kv_groups"``: the Llama's 4 KV
heads go with their query heads; 25% of 4 rounds to 1). Target (issue 16): at 50%, the compact step at most
0.6x the full-width one.

Run: ``pytest bench/bench_compact_training.py --benchmark-enable --benchmark-columns=median,iqr,rounds``
"""

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_for_training, harden, param_groups, prepare_model

MODELS = {
    "minilm": dict(config=dict(vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                               num_attention_heads=12, max_position_embeddings=512),
                   batch=16, tokens=128, alignment=64),
    "llama": dict(config=dict(vocab_size=8000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                              num_attention_heads=16, num_key_value_heads=4, head_dim=64, max_position_embeddings=1024),
                  batch=2, tokens=512, alignment=64),
}


def _model(name: str, sparsity: float, groups=("mlp", "heads")):
    import transformers as t

    spec = MODELS[name]
    torch.manual_seed(0)
    if name == "minilm":
        model = t.BertModel(t.BertConfig(**spec["config"]))
    else:
        model = t.LlamaForCausalLM(t.LlamaConfig(**spec["config"]))
    form = "plain" if "hidden" in groups else "per_layer"  # a pruned hidden size saves in the plain form only
    prepare_model(model, MaskedDoRAConfig(rank=8, alignment={"mlp": spec["alignment"]}, importance="none",
                                          target_sparsity=sparsity, save_form=form, target_groups=groups))
    harden(model)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, spec["config"]["vocab_size"], (spec["batch"], spec["tokens"]), generator=gen)
    batch = {"input_ids": ids, "labels": ids} if name == "llama" else {"input_ids": ids}
    return model, batch


def _loss(model, batch):
    out = model(**batch)
    return out.loss if getattr(out, "loss", None) is not None else out.last_hidden_state.pow(2).mean()


@pytest.mark.parametrize("width", ["full", "compact"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
@pytest.mark.parametrize("name", list(MODELS))
def test_recovery_step(benchmark, name, sparsity, width):
    _time_step(benchmark, *_model(name, sparsity), name, sparsity, width)


@pytest.mark.parametrize("width", ["full", "compact"])
def test_recovery_step_hidden(benchmark, width):
    model, batch = _model("llama", 0.25, ("mlp", "heads", "hidden"))
    _time_step(benchmark, model, batch, "llama+hidden", 0.25, width)


def _time_step(benchmark, model, batch, name, sparsity, width):
    if width == "compact":
        compact_for_training(model)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-4))

    def step():
        _loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, the norm cache)
    benchmark.extra_info.update(model=name, sparsity=sparsity, width=width, threads=torch.get_num_threads(),
                                tokens=batch["input_ids"].numel())
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
