"""Tiny random Hugging Face models of each supported family (built from configs, no download)."""

from __future__ import annotations

import copy

import torch

from tiny_family_table import AVAILABLE as TABLE_FAMILIES

# decoders with GQA (4 query heads, 2 KV heads, head_dim 8)
GQA_DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "cohere", "granite", "phi",
                "stablelm", "phi3", "cohere-qk-norm", "stablelm-qk-norm",
                "mixtral", "qwen3_moe")  # mixtral, qwen3_moe: 4 experts, top-2
# Falcon's fused query_key_value in each of its config's layouts: multi_query (the default, Falcon-7B: one KV head),
# new_decoder_architecture (Falcon-40B: grouped by KV head, here 2 KV heads, with biases) and neither (Falcon-RW's
# per-head layout and sequential attention/MLP, with rotary positions: its alibi refuses head pruning)
FALCONS = ("falcon", "falcon-new", "falcon-rw")
ONE_KV_HEAD = ("falcon",)  # multi-query: heads prune only as query heads (gqa="query_heads")
FAMILIES = GQA_DECODERS + FALCONS + ("opt", "gpt_neox", "gpt2", "bert", "roberta", "xlm-roberta", "electra",
                                     "deberta-v2", "distilbert", "modernbert", "bart")
# families whose MLP prunes but whose heads cannot (the spec refuses them, see masked_dora.models.specs)
MLP_ONLY_FAMILIES = ("olmo2", "t5", "t5-gated", "mt5")  # t5-gated: T5 v1.1 / Flan-T5's gated wi_0, wi_1
DECODER_LMS = GQA_DECODERS + FALCONS + ("opt", "gpt_neox", "gpt2", "olmo2")  # causal LMs: generate() is checked
# per-head q/k norms (cohere's use_qk_norm: weight rows (heads, head_dim); stablelm's qk_layernorm: one LayerNorm
# per head), and the config flag that turns them on
QK_NORM_FAMILIES = {"cohere-qk-norm": "use_qk_norm", "stablelm-qk-norm": "qk_layernorm"}

# the families of tests/tiny_families_*.py (tiny_family_table) that the installed transformers has
FAMILIES += tuple(f for f, t in TABLE_FAMILIES.items() if t.heads)
MLP_ONLY_FAMILIES += tuple(f for f, t in TABLE_FAMILIES.items() if not t.heads)
DECODER_LMS += tuple(f for f, t in TABLE_FAMILIES.items() if t.causal_lm)
ONE_KV_HEAD += tuple(f for f, t in TABLE_FAMILIES.items() if t.kv_heads == 1)


def kv_heads(family: str) -> int:
    """KV heads of the tiny ``family`` (4 query heads in every family)."""
    if family in TABLE_FAMILIES:
        return TABLE_FAMILIES[family].kv_heads
    if family in ONE_KV_HEAD:
        return 1
    return 2 if family in GQA_DECODERS + ("falcon-new",) else 4


def prune_kwargs(family: str) -> dict:
    """MaskedDoRAConfig settings a family's heads need: one KV head prunes only query heads."""
    extra = TABLE_FAMILIES[family].prune if family in TABLE_FAMILIES else {}
    return {"gqa": "query_heads", **extra} if family in ONE_KV_HEAD else dict(extra)


def _classes(t, family):
    """(config class, base model class, LM class) of ``family``."""
    table = {
        "llama": ("LlamaConfig", "LlamaModel", "LlamaForCausalLM"),
        "mistral": ("MistralConfig", "MistralModel", "MistralForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2Model", "Qwen2ForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3Model", "Qwen3ForCausalLM"),
        "gemma": ("GemmaConfig", "GemmaModel", "GemmaForCausalLM"),
        "gemma2": ("Gemma2Config", "Gemma2Model", "Gemma2ForCausalLM"),
        "gemma3_text": ("Gemma3TextConfig", "Gemma3TextModel", "Gemma3ForCausalLM"),
        "cohere": ("CohereConfig", "CohereModel", "CohereForCausalLM"),
        "cohere-qk-norm": ("CohereConfig", "CohereModel", "CohereForCausalLM"),
        "granite": ("GraniteConfig", "GraniteModel", "GraniteForCausalLM"),
        "phi": ("PhiConfig", "PhiModel", "PhiForCausalLM"),
        "stablelm": ("StableLmConfig", "StableLmModel", "StableLmForCausalLM"),
        "stablelm-qk-norm": ("StableLmConfig", "StableLmModel", "StableLmForCausalLM"),
        "olmo2": ("Olmo2Config", "Olmo2Model", "Olmo2ForCausalLM"),
        "phi3": ("Phi3Config", "Phi3Model", "Phi3ForCausalLM"),
        "mixtral": ("MixtralConfig", "MixtralModel", "MixtralForCausalLM"),
        "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeModel", "Qwen3MoeForCausalLM"),
        "falcon": ("FalconConfig", "FalconModel", "FalconForCausalLM"),
        "falcon-new": ("FalconConfig", "FalconModel", "FalconForCausalLM"),
        "falcon-rw": ("FalconConfig", "FalconModel", "FalconForCausalLM"),
        "opt": ("OPTConfig", "OPTModel", "OPTForCausalLM"),
        "gpt_neox": ("GPTNeoXConfig", "GPTNeoXModel", "GPTNeoXForCausalLM"),
        "gpt2": ("GPT2Config", "GPT2Model", "GPT2LMHeadModel"),
        "modernbert": ("ModernBertConfig", "ModernBertModel", "ModernBertForMaskedLM"),
        "bert": ("BertConfig", "BertModel", "BertForMaskedLM"),
        "roberta": ("RobertaConfig", "RobertaModel", "RobertaForMaskedLM"),
        "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel", "XLMRobertaForMaskedLM"),
        "electra": ("ElectraConfig", "ElectraModel", "ElectraForMaskedLM"),
        "deberta-v2": ("DebertaV2Config", "DebertaV2Model", "DebertaV2ForMaskedLM"),
        "distilbert": ("DistilBertConfig", "DistilBertModel", "DistilBertForMaskedLM"),
        "bart": ("BartConfig", "BartModel", "BartForConditionalGeneration"),
        "t5": ("T5Config", "T5EncoderModel", "T5EncoderModel"),  # the pruned stack; the seq2seq model: its own test
        "t5-gated": ("T5Config", "T5EncoderModel", "T5EncoderModel"),
        "mt5": ("MT5Config", "MT5EncoderModel", "MT5EncoderModel"),
    }
    table.update({f: t.classes for f, t in TABLE_FAMILIES.items()})
    if family not in table:
        raise ValueError(f"family: expected one of {FAMILIES + MLP_ONLY_FAMILIES}, got {family!r}")
    return tuple(getattr(t, name) for name in table[family])


def tiny_config(family: str):
    """A tiny config of ``family``: 2 layers, hidden 32, 4 heads of 8 (:func:`kv_heads` KV heads), MLP 64."""
    import transformers as t

    cfg_cls, _, _ = _classes(t, family)
    if family in TABLE_FAMILIES:  # (a copy: transformers 5.17's encoder-decoder configs pop keys of their sub-dicts)
        return cfg_cls(**copy.deepcopy(TABLE_FAMILIES[family].config))
    common = dict(vocab_size=97, num_hidden_layers=2, max_position_embeddings=64)
    encoder = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0, **common)
    if family in GQA_DECODERS + ("olmo2",):
        extra = {"gemma": dict(head_dim=8), "gemma2": dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=4),
                 "gemma3_text": dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=4),
                 "qwen3": dict(head_dim=8), "phi": dict(resid_pdrop=0.0, embd_pdrop=0.0),
                 "phi3": dict(resid_pdrop=0.0, embd_pdrop=0.0, pad_token_id=0),
                 "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
                 "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=8)
                 }.get(family, {})
        if family in QK_NORM_FAMILIES:
            extra = {QK_NORM_FAMILIES[family]: True}
        return cfg_cls(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                       **extra, **common)
    if family in FALCONS:
        layout = {"falcon": {}, "falcon-new": dict(new_decoder_architecture=True, num_kv_heads=2, bias=True),
                  "falcon-rw": dict(multi_query=False, parallel_attn=False, bias=True)}[family]
        return cfg_cls(hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, hidden_dropout=0.0,
                       attention_dropout=0.0, **layout, **common)
    if family == "opt":
        return cfg_cls(hidden_size=32, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32, dropout=0.0,
                       **common)
    if family == "gpt_neox":
        return cfg_cls(hidden_size=32, intermediate_size=64, num_attention_heads=4, hidden_dropout=0.0,
                       attention_dropout=0.0, **common)
    if family == "gpt2":
        return cfg_cls(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64, resid_pdrop=0.0,
                       embd_pdrop=0.0, attn_pdrop=0.0)
    if family == "modernbert":
        return cfg_cls(hidden_size=32, intermediate_size=64, num_attention_heads=4, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2, cls_token_id=1, sep_token_id=2, global_attn_every_n_layers=2,
                       local_attention=8, **common)
    if family in ("bert", "roberta", "xlm-roberta"):
        return cfg_cls(**encoder)
    if family == "electra":
        return cfg_cls(embedding_size=16, **encoder)
    if family == "deberta-v2":  # DeBERTa-v3's attention: relative positions through the shared key/query projections
        return cfg_cls(relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=True, position_buckets=16,
                       max_relative_positions=-1, position_biased_input=False, **encoder)
    if family == "distilbert":
        return cfg_cls(dim=32, hidden_dim=64, n_heads=4, n_layers=2, vocab_size=97, max_position_embeddings=64,
                       dropout=0.0, attention_dropout=0.0)
    if family in ("t5", "t5-gated", "mt5"):
        return cfg_cls(vocab_size=97, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4,
                       dropout_rate=0.0, feed_forward_proj="relu" if family == "t5" else "gated-gelu",
                       decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    if family == "bart":
        return cfg_cls(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64,
                       decoder_ffn_dim=48, encoder_attention_heads=4, decoder_attention_heads=4,
                       max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    raise ValueError(f"family: no tiny config for {family!r}")


def tiny_model(family: str, seed: int = 0, kind: str = "base"):
    """A tiny model of ``family`` (:func:`tiny_config`).

    ``kind``: ``"base"`` (the bare model) or ``"lm"`` (with a head: causal LM / masked LM / BART's seq2seq LM).
    """
    import transformers as t

    _, base, lm = _classes(t, family)
    config = tiny_config(family)
    torch.manual_seed(seed)
    model = (lm if kind == "lm" else base)(config)
    if family in QK_NORM_FAMILIES:
        _distinct_head_norms(model)
    _distinct_attention_sinks(model)
    _distinct_relative_position_biases(model)
    return model.eval()


@torch.no_grad()
def _distinct_head_norms(model) -> None:
    """Give every per-head q/k norm weight its own values: they start at ones, the same for every head, so a
    compacted model that kept the wrong heads' norms would still equal the masked one."""
    for name, p in model.named_parameters():
        if any(f".{norm}." in name for norm in ("q_norm", "k_norm", "q_layernorm", "k_layernorm")):
            p.uniform_(0.5, 1.5)


@torch.no_grad()
def _distinct_attention_sinks(model) -> None:
    """Give every per-head attention sink (``self_attn.sinks``, one logit per query head) and output-gate bias
    (Beam's ``self_attn.gate_bias``) its own value: they start at zeros, so a compacted model that kept the wrong
    heads' entries would still equal the masked one."""
    for name, p in model.named_parameters():
        if name.endswith((".sinks", ".self_attn.gate_bias")):
            p.uniform_(-1.0, 1.0)


@torch.no_grad()
def _distinct_relative_position_biases(model) -> None:
    """Give every relative-position bias table (BEiT's, data2vec-vision's ``relative_position_bias_table``, one
    column per head) random values: they start at zeros, so a compacted model that kept the wrong heads' columns
    would still equal the masked one."""
    for name, p in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            p.uniform_(-1.0, 1.0)


def lm_batches(n: int = 4, seed: int = 0):
    """``n`` language-modelling batches (2 x 9 tokens, labels = inputs) for the tiny causal LMs."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 97, (2, 9), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def tiny_inputs(batch: int = 2, seq: int = 9, seed: int = 1, family: str = ""):
    """Inputs of the tiny models: token ids (``seq`` of them, the first row padded by 2) with their attention mask;
    for a ``family`` of the table (:mod:`tiny_family_table`), its kind of input (``TinyFamily.inputs``: images,
    audio samples or log-mel features, random normal, of the sizes its tiny config reads), with decoder inputs (the
    first 4 token ids) for an encoder-decoder that needs them (``TinyFamily.seq2seq``)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some padding
    entry = TABLE_FAMILIES.get(family)
    if entry is None or entry.inputs == "input_ids":
        inputs = {"input_ids": ids, "attention_mask": mask}
    else:
        signal = _signal(entry.inputs, tiny_config(family), batch, gen, entry.frame_features)
        inputs = {entry.inputs: signal.unsqueeze(1).expand(-1, entry.audio_channels, -1).contiguous()
                  if entry.audio_channels else signal}
    if entry is not None and entry.seq2seq:
        inputs["decoder_input_ids"] = ids[:, :4]
    return inputs


def _signal(kind: str, config, batch: int, gen: torch.Generator, frame_features: str = "") -> torch.Tensor:
    """A random batch of non-text inputs of ``kind`` sized by ``config`` (``frame_features``: the config attribute
    of the feature width of (batch, frames, features) input_features, :class:`TinyFamily`)."""
    if frame_features:  # 32 frames of features
        path, _, times = frame_features.partition("*")
        for name in path.split("."):
            config = getattr(config, name)
        shape = (batch, 32, config * int(times or 1))
    elif kind == "pixel_values":
        config = config if hasattr(config, "image_size") else config.encoder  # (an image encoder-decoder's encoder)
        shape = (batch, config.num_channels, config.image_size, config.image_size)
    elif kind == "input_values":  # raw audio: 400 samples
        shape = (batch, 400)
    else:  # input_features: Whisper's encoder wants exactly 2 * max_source_positions mel frames
        shape = (batch, config.num_mel_bins, 2 * config.max_source_positions)
    return torch.randn(shape, generator=gen)


def output_tensor(out) -> torch.Tensor:
    for name in ("logits", "logits_per_image", "last_hidden_state"):  # (a two-tower CLIP: image-text logits)
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise TypeError(f"no logits or last_hidden_state in {type(out).__name__}")


def harden_and_compact(model, family: str = ""):
    """Harden, then the masked model's outputs, the compact model and its outputs on the same inputs
    (:func:`tiny_inputs` of ``family``)."""
    from masked_dora.models import compact_model, harden

    harden(model)
    inputs = tiny_inputs(family=family)
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
        return ref, small, output_tensor(small(**inputs))


def assert_reloads_and_generates_equal(small, path, model, ref, inputs, generate: bool = True):
    """``small`` (a compacted model) saved to ``path`` and reloaded by ``load_compact``: its outputs on ``inputs``
    equal ``ref``, and (``generate``) it generates ``model``'s greedy tokens from the first input row. Returns
    the reloaded model."""
    from masked_dora.models import load_compact

    small.save_pretrained(str(path))
    reloaded = load_compact(str(path))
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(reloaded(**inputs)), ref, rtol=1e-4, atol=1e-5)
    if generate:
        ids = inputs["input_ids"][:1]
        gen = dict(max_new_tokens=6, do_sample=False)
        assert torch.equal(reloaded.generate(ids, **gen), model.generate(ids, **gen))
    return reloaded


def assert_checkpointing_keeps_loss_and_gradients(make_model, checkpointing: bool, reentrant: bool = False) -> dict:
    """One training step of ``make_model()`` on :func:`lm_batches`, without and (``checkpointing``) with HF's
    gradient checkpointing (non-reentrant, or ``reentrant``): equal losses and gradients. Returns the step's
    gradients (by name)."""

    def step(ckpt):
        model = make_model()
        model.train()
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        torch.manual_seed(123)
        out = model(**lm_batches(1)[0])
        out.loss.backward()
        return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref = step(False)
    loss, grads = step(checkpointing)
    assert torch.equal(loss, ref_loss)
    for name, g in ref.items():
        assert grads[name] is not None and torch.allclose(grads[name], g, rtol=1e-5, atol=1e-7), name
    return ref


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


def _char_tokenizer(path: str) -> int:
    """Write a character-level WordPiece tokenizer to ``path``; returns its vocabulary size."""
    import os
    import string

    from transformers import BertTokenizerFast

    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars) + ["##" + c for c in chars]
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=os.path.join(path, "vocab.txt")).save_pretrained(path)
    return len(vocab)


def tiny_bert_dir(path: str) -> str:
    """A saved tiny BERT (2 layers, hidden 32, 4 heads, MLP 64) with a character-level WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    vocab_size = _char_tokenizer(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return path


def tiny_llama_dir(path: str) -> str:
    """A saved tiny Llama causal LM (2 layers, hidden 32, 4 heads / 2 KV heads, MLP 64), same tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab_size = _char_tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


_PLAIN_RELOAD = """
import json, sys, torch, transformers
for path, auto in json.loads(sys.argv[1]):
    inputs = torch.load(path + "/inputs.pt")
    model = getattr(transformers, auto).from_pretrained(path).eval()
    with torch.no_grad():
        out = model(**inputs)
    out = next(getattr(out, k) for k in ("logits", "logits_per_image", "last_hidden_state")
               if getattr(out, k, None) is not None)
    torch.save(out, path + "/reloaded.pt")
assert not any(m.startswith("masked_dora") for m in sys.modules), "masked_dora was imported"
print("ok")
"""


def reload_plain_in_clean_process(jobs):
    """Reload every ``(checkpoint dir, transformers Auto class name)`` with plain transformers, in one process
    that never imports masked_dora (run from the first checkpoint dir, not the repository), on each dir's
    ``inputs.pt``; returns the outputs (logits, else logits_per_image, else last_hidden_state), in order."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    res = subprocess.run([sys.executable, "-c", _PLAIN_RELOAD, json.dumps([list(j) for j in jobs])],
                         capture_output=True, text=True, env=env, cwd=jobs[0][0], timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
    return [torch.load(os.path.join(path, "reloaded.pt")) for path, _ in jobs]
