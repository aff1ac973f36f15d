"""Tiny random Hugging Face models of each supported family (built from configs, no download)."""

from __future__ import annotations

import torch

FAMILIES = ("llama", "mistral", "qwen2", "bert", "roberta", "distilbert")


def tiny_model(family: str, seed: int = 0, kind: str = "base"):
    """A tiny model of ``family``; GQA (4 query heads, 2 KV heads) for the decoders.

    ``kind``: ``"base"`` (the bare model) or ``"lm"`` (with a head: causal LM / masked LM).
    """
    import transformers as t

    common = dict(vocab_size=97, num_hidden_layers=2)
    if family in ("llama", "mistral", "qwen2"):
        cfg_cls, base, lm = {"llama": (t.LlamaConfig, t.LlamaModel, t.LlamaForCausalLM),
                             "mistral": (t.MistralConfig, t.MistralModel, t.MistralForCausalLM),
                             "qwen2": (t.Qwen2Config, t.Qwen2Model, t.Qwen2ForCausalLM)}[family]
        config = cfg_cls(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, **common)
    elif family in ("bert", "roberta"):
        cfg_cls, base, lm = {"bert": (t.BertConfig, t.BertModel, t.BertForMaskedLM),
                             "roberta": (t.RobertaConfig, t.RobertaModel, t.RobertaForMaskedLM)}[family]
        config = cfg_cls(hidden_size=32, intermediate_size=64, num_attention_heads=4, max_position_embeddings=64,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
    elif family == "distilbert":
        cfg_cls, base, lm = t.DistilBertConfig, t.DistilBertModel, t.DistilBertForMaskedLM
        config = cfg_cls(dim=32, hidden_dim=64, n_heads=4, n_layers=2, vocab_size=97, max_position_embeddings=64,
                         dropout=0.0, attention_dropout=0.0)
    else:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    torch.manual_seed(seed)
    model = (lm if kind == "lm" else base)(config)
    return model.eval()


def tiny_inputs(batch: int = 2, seq: int = 9, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask}


def output_tensor(out) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise TypeError(f"no logits or last_hidden_state in {type(out).__name__}")


@torch.no_grad()
def randomize_adapters(model, seed: int = 0) -> None:
    """Give every adapter and mask logit non-trivial values (B != 0, m != ||W0||, mixed logits)."""
    from masked_dora.nn import MaskedDoRALinear

    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, MaskedDoRALinear):
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * 0.1)
            module.magnitude.mul_(1.0 + 0.2 * torch.rand(module.magnitude.shape, generator=gen))
    state = getattr(model, "masked_dora", None)
    if state is not None:
        for group in state.groups.values():
            group.mask_logits.copy_(torch.randn(group.mask_logits.shape, generator=gen))


def tiny_bert_dir(path: str) -> str:
    """A saved tiny BERT (2 layers, hidden 32, 4 heads, MLP 64) with a character-level WordPiece tokenizer."""
    import os
    import string

    from transformers import BertConfig, BertModel, BertTokenizerFast

    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars) + ["##" + c for c in chars]
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=os.path.join(path, "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return path
