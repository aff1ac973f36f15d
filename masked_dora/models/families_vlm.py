"""Vision-language models: which language model a VLM wraps (``VLM_WRAPPERS``), and the specs of the language
models that only VLMs have; :mod:`masked_dora.models.families` adds them to the table.

A VLM's outer ``model_type`` (``gemma3``, ``llava``, ``qwen2_vl``, ...) has no spec of its own: spec lookup finds
its wrapper here, takes the spec of ``config.text_config.model_type`` (Llama, Mistral, Gemma 3's text model, the
Qwen-VL text models below) and wraps it (:func:`masked_dora.models.wrapper_spec.wrap_spec`): the blocks are those
of the language model, the sizes are read from and written to the text config, the vision tower and the
projector are left as they are, and hidden pruning is refused (the projector writes into the residual stream).
"""

from __future__ import annotations

from dataclasses import replace as replace_dataclass
from typing import Dict

from .spec_types import ExpertsLayout, HeadSpec, MLPSpec, ModelSpec, PerHeadSpec
from .wrapper_spec import WrapperSpec

# outer model_type -> where its language model is. transformers 5 nests it as model.language_model
# (model.text_model in Idefics3/SmolVLM), a base model whose block list is "layers". Qwen3.5's language model
# (qwen3_5_text, MiniCPM-V's too) is a hybrid of gated DeltaNet and attention blocks, LFM2-VL's and LFM3-VL's
# (lfm2, lfm3) of short convolution and attention blocks: their MLP prunes, their heads are refused; the
# Qwen3.5-MoE one (qwen3_5_moe_text) the same with an MoE in every block: its routed experts prune, as do
# Qwen4-Exp's (qwen4_exp_text: that block between hyper-connections). Gemma 4 Unified has no vision tower (its
# embedder projects raw patches into image tokens) around Gemma 4's dense text blocks (gemma4_unified_text)
VLM_WRAPPERS: Dict[str, WrapperSpec] = {
    **{t: WrapperSpec(language_model="language_model") for t in (
        "gemma3", "gemma4", "llava", "llava_next", "llava_next_video", "llava_onevision", "vipllava", "mistral3",
        "lighton_ocr", "paligemma", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe",
        "lfm2_vl", "lfm3_vl", "internvl", "qianfan_ocr", "aya_vision", "cohere2_vision", "video_llava", "deepseek_vl",
        "ovis2", "exaone4_5", "got_ocr2", "hyperclovax_vision_v2", "cosmos3_omni", "video_llama_3",
        "deepseek_vl_hybrid", "minicpmv4_6", "minicpmv4_7", "minicpm_ocr", "qwen4_exp",
        "gemma4_unified")},
    **{t: WrapperSpec(language_model="text_model") for t in ("idefics3", "smolvlm")},
    # BLIP-2 (an OPT inside), InstructBLIP (a Llama/Vicuna): a causal LM, the blocks in its base model; around a
    # Flan-T5, a T5ForConditionalGeneration with its encoder and decoder stacks directly under it (their MLPs
    # prune; T5's heads are refused); their forward needs an image
    **{t: WrapperSpec(language_model="language_model.model", seq2seq_language_model="language_model",
                      text_alone=False) for t in ("blip-2", "instructblip")},
    # Llama 3.2 Vision: the language model (mllama_text_model, below) reads the image through its cross-attention
    # blocks, which text without an image skips (they would train and calibrate on nothing): not text_alone
    "mllama": WrapperSpec(language_model="language_model", text_alone=False),
    # Idefics2's connector MLP is built text_config.intermediate_size wide: a pruned MLP saves in the per-layer form
    "idefics2": WrapperSpec(language_model="text_model", shared_text_keys=("intermediate_size",)),
    # GLM-4.1V and GLM-4.6V (glm4v_text), GLM-4.5V (glm4v_moe_text: GLM-4.5's MoE blocks), GLM-OCR; Janus (a Llama; its
    # image-generation VQ-VAE, embeddings and head are left as they are); FastVLM (a Qwen2 after timm's FastViTHD);
    # Kimi-K2.5 (a DeepSeek-V3: MLA, its heads refused); PaddleOCR-VL (paddleocr_vl_text, ERNIE-4.5-like);
    # HunYuan-VL (hunyuan_vl_text, HunYuan-Dense-like)
    **{t: WrapperSpec(language_model="language_model") for t in ("glm4v", "glm4v_moe", "janus", "fast_vlm",
                                                                  "kimi_k25", "glm46v", "glm_ocr",
                                                                  "paddleocr_vl", "hunyuan_vl")},
    # Qwen2.5-Omni's thinker (the text-generating half of Qwen2.5-Omni; its audio tower is left as it is, as the
    # vision tower): qwen2_5_omni_text, Qwen2.5-VL's language model reading head_dim from the config
    "qwen2_5_omni_thinker": WrapperSpec(language_model="language_model"),
    # ERNIE-4.5-VL (ernie4_5_vl_moe_text, below: text experts prune, vision experts kept whole)
    "ernie4_5_vl_moe": WrapperSpec(language_model="language_model"),
    # Aria (aria_text, below: an MoE in every block); Molmo2 (molmo2_text, below)
    **{t: WrapperSpec(language_model="language_model") for t in ("aria", "molmo2")},
    # Fuyu: a Persimmon (its heads: a fused query_key_value per head) reading the image's patches, each linearly
    # projected (vision_embed_tokens) into one image token
    "fuyu": WrapperSpec(language_model="language_model"),
    # PerceptionLM: a Llama after timm's Perception Encoder (a timm_wrapper tower, left as it is)
    "perception_lm": WrapperSpec(language_model="language_model"),
    # Emu3 (emu3_text_model, below; its VQ-VAE turns an image into tokens of the vocabulary, left as it is)
    "emu3": WrapperSpec(language_model="text_model"),
    # Granite 4 Vision (granite4_vision_text, below): its image features are added (deepstack) to the residual
    # stream of the blocks its deepstack_layer_map / spatial_target_layers name, which MLP and head pruning keep
    "granite4_vision": WrapperSpec(language_model="language_model"),
    # InstructBLIP-Video: InstructBLIP's layout (a causal LM's base model; its forward needs the video)
    "instructblipvideo": WrapperSpec(language_model="language_model.model", text_alone=False),
    # Llama 4 (Scout, Maverick): its language model a Llama4ForCausalLM (llama4_text) whose base model holds the
    # blocks; the vision model's pixel-shuffled patches, projected, replace the image tokens' embeddings
    "llama4": WrapperSpec(language_model="language_model.model"),
    # Gemma 3n (gemma3n_text, below); its vision tower (timm's MobileNetV5), audio tower and their embedders are
    # left as they are
    "gemma3n": WrapperSpec(language_model="language_model"),
    # ShieldGemma 2 (ShieldGemma2ForImageClassification): a Gemma 3 VLM (its model: Gemma3ForConditionalGeneration,
    # the language model at model.model.language_model) whose logits are its last position's Yes/No token logits
    "shieldgemma2": WrapperSpec(language_model="language_model"),
    # Qwen3-Omni-MoE's thinker (its text-generating half; the talker and code2wav are not covered): its language
    # model qwen3_omni_moe_text (qwen3_vl_moe_text's layout); its audio tower, as the vision tower, left as it is
    "qwen3_omni_moe_thinker": WrapperSpec(language_model="language_model"),
}


def vlm_text_specs(llama_style: dict, mixtral_style: dict, qk_norm_spans_heads: str) -> Dict[str, ModelSpec]:
    """The specs of the language models only VLMs have (and of Idefics 1 and Chameleon, VLMs whose config is
    their language model's: no WrapperSpec), built on the ``llama`` spec's fields (``LLAMA_STYLE``), the packed experts'
    (``MIXTRAL_STYLE``) and the reason OLMo-2's heads are refused (``qk_norm_spans_heads``)."""
    # the attention sets head_dim = hidden_size // num_attention_heads (no head_dim key), per-head attributes
    derived_head_dim = replace_dataclass(llama_style["heads"], head_dim_key=None, attrs=(
        ("num_heads", "heads"), ("num_key_value_heads", "kv_heads"), ("num_key_value_groups", "groups")))
    # the same attention reading head_dim from the config where it has one (else hidden_size // heads)
    config_head_dim = replace_dataclass(derived_head_dim, head_dim_key="head_dim")
    # GLM-4's MLP: a fused gate_up_proj, rows [gate | up]
    glm_mlp = MLPSpec(producers=("mlp.gate_up_proj",), consumer="mlp.down_proj", size_key="intermediate_size",
                      segments=(2,))

    def mllama_heads(attention: str) -> HeadSpec:
        """Llama's attention at ``attention``, its head_dim derived (hidden_size // num_attention_heads)."""
        return replace_dataclass(derived_head_dim, **{role: f"{attention}.{role[0]}_proj" for role in (
            "query", "key", "value", "output")}, attention=attention)

    def idefics_heads(attention: str) -> HeadSpec:
        """Idefics 1's attention at ``attention``: no GQA, head_dim = hidden_size // num_attention_heads."""
        return HeadSpec(query=f"{attention}.q_proj", key=f"{attention}.k_proj", value=f"{attention}.v_proj",
                        output=f"{attention}.o_proj", heads_key="num_attention_heads", attention=attention,
                        attrs=(("num_heads", "heads"),))

    def idefics_stack(stack: str, layers: str, attention: str) -> dict:
        """One of Idefics 1's block lists, the stack ``stack``: Llama's MLP (no width attribute), its attention at
        ``attention``."""
        return dict(name=f"idefics-{stack}", layers=(layers,), hidden_key="hidden_size", stack=stack,
                    mlp=replace_dataclass(llama_style["mlp"], size_attrs=()), heads=idefics_heads(attention))

    return {
        # Idefics 1 (IdeficsForVisionText2Text): its config is the language model's (no text_config), its blocks two
        # lists under model: Llama-like self-attention blocks (model.layers, rotary) and, every cross_layer_interval
        # blocks, a tanh-gated cross-attention block before one (model.gated_cross_attn_layers: q from the text,
        # k/v from the vision features, q/k RMSNorms over head_dim shared by all heads with qk_layer_norms), each
        # with Llama's MLP: two stacks sharing intermediate_size and num_attention_heads. The attention derives
        # head_dim = hidden_size // num_attention_heads: pruned heads save in the per-layer form, as do widths the
        # two stacks do not share. Its forward needs an image (the vision tower, the perceiver resampler where
        # use_resampler, the decoupled embeddings and LM head stay as they are); no hidden spec (refused)
        "idefics": ModelSpec(model_types=("idefics",), **dict(
            idefics_stack("self_attention", "model.layers", "self_attn"), name="idefics"),
            stacks=(ModelSpec(model_types=(), **idefics_stack("cross_attention", "model.gated_cross_attn_layers",
                                                              "cross_attn")),)),
        # Chameleon (ChameleonForConditionalGeneration): its config is the language model's, its VQ-VAE turns an image
        # into tokens of the vocabulary (no projector; the VQ-VAE stays as it is), its blocks model.layers: Llama's
        # (swin_norm: the norms after the attention and the MLP instead, over the hidden size) with q/k LayerNorms
        # per head (weight and bias (heads, head_dim), each head normalised over its own head_dim: their rows follow
        # their heads). The attention derives head_dim = hidden_size // num_attention_heads: pruned heads save in
        # the per-layer form, a pruned MLP alone plainly. No hidden spec (refused)
        "chameleon": ModelSpec(name="chameleon", model_types=("chameleon",), **dict(
            llama_style, heads=replace_dataclass(derived_head_dim, per_head=(
                PerHeadSpec("self_attn.q_norm", "heads"), PerHeadSpec("self_attn.k_norm", "kv_heads"))))),
        # Qwen2-VL / Qwen2.5-VL: Llama's modules (q/k/v biases, multimodal rotary positions per head dim), but the
        # attention sets head_dim = hidden_size // num_attention_heads (no head_dim key) and checks it at build:
        # pruned heads save in the per-layer form (load_compact), a pruned MLP alone plainly
        "qwen2_vl_text": ModelSpec(name="qwen2_vl_text", model_types=("qwen2_vl_text", "qwen2_5_vl_text"), **dict(
            llama_style, heads=derived_head_dim)),
        # Qwen3-VL: Qwen3's attention (head_dim from the config, q/k norms over head_dim shared by all heads);
        # the deepstack visual features are added to the residual stream of its first blocks, which MLP and head
        # pruning leave full width (no hidden spec: refused)
        "qwen3_vl_text": ModelSpec(name="qwen3_vl_text", model_types=("qwen3_vl_text",), **llama_style),
        # Qwen3-VL-MoE: Qwen3-VL's attention and Qwen3-MoE's experts (gate_up_proj (E, 2I, H), down_proj (E, H, I),
        # width moe_intermediate_size: every expert keeps as many channels, its own); the blocks mlp_only_layers or
        # decoder_sparse_step make dense hold Llama's MLP of width intermediate_size (the qwen3_moe spec's layout).
        # Qwen3-Omni-MoE thinker's language model (qwen3_omni_moe_text) is laid out the same
        "qwen3_vl_moe_text": ModelSpec(name="qwen3_vl_moe_text", model_types=(
            "qwen3_vl_moe_text", "qwen3_omni_moe_text"), **dict(
            mixtral_style, mlp=replace_dataclass(mixtral_style["mlp"], size_key="moe_intermediate_size")),
            dense_mlp=llama_style["mlp"]),
        # Llama 3.2 Vision's text model (MllamaForCausalLM; the language model of MllamaForConditionalGeneration):
        # Llama's self-attention blocks and, at cross_attention_layers, cross-attention blocks (cross_attn: q from
        # the text, k/v from the vision features, q/k RMSNorm over head_dim shared by all heads; tanh-gated
        # attention and MLP). Both have Llama's MLP; their heads prune, each kind at its paths (heads_elsewhere).
        # The attention derives head_dim = hidden_size // num_attention_heads: pruned heads save in the per-layer
        # form (load_compact), a pruned MLP alone plainly
        "mllama_text": ModelSpec(name="mllama_text", model_types=("mllama_text_model",), **dict(
            llama_style, heads=mllama_heads("self_attn")), heads_elsewhere=mllama_heads("cross_attn")),
        # GLM-4.1V / GLM-4.5V's dense language model (glm4v_text): GLM-4's block (fused gate_up_proj rows [gate |
        # up], post-norms over the hidden size after the attention and the MLP) under Qwen2-VL's attention (q/k/v
        # biases, head_dim = hidden_size // num_attention_heads, no head_dim key; multimodal rotary positions over
        # the first half of each head's dims, the same for every head): pruned heads save in the per-layer form
        "glm4v_text": ModelSpec(name="glm4v_text", model_types=("glm4v_text",), **dict(
            llama_style, heads=derived_head_dim, mlp=glm_mlp)),
        # GLM-OCR's language model (glm_ocr_text): glm4v_text's block without the q/k/v biases, its attention
        # reading head_dim from the config where it has one (else hidden_size // num_attention_heads): the
        # compacted config says head_dim, and pruned heads save plainly
        "glm_ocr_text": ModelSpec(name="glm_ocr_text", model_types=("glm_ocr_text",), **dict(
            llama_style, heads=config_head_dim, mlp=glm_mlp)),
        # PaddleOCR-VL's language model (paddleocr_vl_text): ERNIE-4.5's Llama layout (use_bias: biases on every
        # projection) with multimodal rotary positions, the same for every head; head_dim from the config
        "paddleocr_vl_text": ModelSpec(name="paddleocr_vl_text", model_types=("paddleocr_vl_text",), **dict(
            llama_style, heads=config_head_dim)),
        # HunYuan-VL's language model (hunyuan_vl_text): HunYuan-Dense's Llama layout (query/key_layernorm over
        # head_dim, one weight for all heads) with multimodal rotary positions, the same for every head
        "hunyuan_vl_text": ModelSpec(name="hunyuan_vl_text", model_types=("hunyuan_vl_text",), **llama_style),
        # Qwen2.5-Omni thinker's language model (qwen2_5_omni_text): Qwen2.5-VL's (q/k/v biases, multimodal rotary
        # positions, the same for every head), its attention and rotary reading head_dim from the config where it
        # has one (else hidden_size // num_attention_heads): the compacted config says head_dim, pruned heads save
        # plainly
        "qwen2_5_omni_text": ModelSpec(name="qwen2_5_omni_text", model_types=("qwen2_5_omni_text",), **dict(
            llama_style, heads=config_head_dim)),
        # ERNIE-4.5-VL's language model (ernie4_5_vl_moe_text): Llama's attention (use_bias: biases on every
        # projection; head_dim from the config; multimodal rotary positions, the same for every head) and, in the
        # blocks mlp_layer_types says "sparse", modality-isolated MoE blocks: text tokens go to mlp.text_moe's packed
        # experts (Mixtral's layout, width moe_intermediate_size[0]), image/video tokens to mlp.vision_moe's (width
        # moe_intermediate_size[1]), both beside a shared expert (kept whole). The text experts' channels prune;
        # the vision experts are kept whole (one experts module per block prunes). moe_intermediate_size is a
        # list, also sizing the shared expert: a pruned expert width saves in the per-layer form. The "dense"
        # blocks hold Llama's MLP of width intermediate_size
        "ernie4_5_vl_moe_text": ModelSpec(name="ernie4_5_vl_moe_text", model_types=("ernie4_5_vl_moe_text",), **dict(
            mixtral_style, heads=config_head_dim, mlp=replace_dataclass(
                mixtral_style["mlp"], size_key="", experts="mlp.text_moe.experts",
                size_attrs=(("mlp.text_moe.experts", "intermediate_dim"),))),
            dense_mlp=llama_style["mlp"]),
        # Aria's language model (aria_text; AriaTextForCausalLM alone too): Llama's attention and, in every block,
        # packed experts stored (E, in, out) with [gate | up] (SiLU) beside shared experts of width
        # intermediate_size * moe_num_shared_experts (kept whole): intermediate_size sizes both, so a pruned expert
        # width saves in the per-layer form
        "aria_text": ModelSpec(name="aria_text", model_types=("aria_text",), **dict(mixtral_style, mlp=MLPSpec(
            producers=("gate_up_proj",), consumer="down_proj", size_key="", segments=(2,), experts="mlp.experts",
            experts_layout=ExpertsLayout(transposed=True), size_attrs=(("mlp.experts", "intermediate_dim"),)))),
        # Molmo2's language model (molmo2_text): Llama's layout with q/k RMSNorms that qk_norm_type lays out per
        # head over head_dim, one weight for all heads ("qwen3", the default: nothing per head), or over all heads'
        # width ("olmo", OLMo-2's: its heads are refused). Its extra vocabulary rows and norm_after's post-norms over
        # the hidden size change nothing per head or channel
        # Granite 4 Vision's language model (granite4_vision_text): Granite's Llama layout (its embedding, residual,
        # attention and logits multipliers change nothing per head or channel), head_dim from the config where it
        # has one (else hidden_size // num_attention_heads): the compacted config says head_dim, pruned heads save
        # plainly
        "granite4_vision_text": ModelSpec(name="granite4_vision_text", model_types=("granite4_vision_text",),
                                          **dict(llama_style, heads=config_head_dim)),
        # Emu3's language model (emu3_text_model; Emu3ForCausalLM alone too): Llama's layout, head_dim from the config
        # where it has one (else hidden_size // num_attention_heads): the compacted config says head_dim
        "emu3_text_model": ModelSpec(name="emu3_text_model", model_types=("emu3_text_model",), **dict(
            llama_style, heads=config_head_dim)),
        # Gemma 3n's language model (gemma3n_text; Gemma3nForCausalLM alone too): Gemma 3's attention (q/k RMSNorms
        # over head_dim, one weight for all heads; a v RMSNorm without weight) and Llama's MLP inside AltUp's
        # predict/correct, the Laurel low-rank branch and the per-layer embeddings' gate, which all read and write the
        # hidden size only. intermediate_size is a list (a width per layer, size_per_layer): a pruned MLP saves plainly.
        # Kept whole per block (block_refusals; the released E2B/E4B have both, in their first and last layers): the
        # MLP of a layer with activation sparsity (activation_sparsity_pattern > 0: its gaussian top-k cuts the gate
        # at the mean + k * std over all gate channels, so removing channels moves the cut for the kept ones); the
        # heads of a layer in KV sharing: the last num_kv_shared_layers layers reuse ("is_kv_shared_layer": no k/v
        # projections; their query heads attend over all KV heads of the layer they read) the keys and values that
        # the last earlier layer of their layer type stores ("store_full_length_kv", where num_kv_shared_layers > 0:
        # transformers 5.17 sets it without KV sharing too; its KV heads are read by later blocks, which
        # masked_dora's per-block head groups would not follow). The other layers' MLP and heads prune
        "gemma3n_text": ModelSpec(name="gemma3n_text", model_types=("gemma3n_text",), **dict(
            llama_style, mlp=replace_dataclass(llama_style["mlp"], size_per_layer=True)), block_refusals=(
            ("mlp", "mlp.activation_sparsity",
             "its activation sparsity (activation_sparsity_pattern) cuts the layer's MLP gate at the mean + k * std "
             "over all its channels, so pruning channels there changes the kept ones"),
            ("heads", "self_attn.is_kv_shared_layer",
             "the layer reuses the keys and values of an earlier layer (KV sharing: num_kv_shared_layers), its query "
             "heads grouped over all of that layer's KV heads"),
            ("heads", "self_attn.store_full_length_kv&self_attn.config.num_kv_shared_layers",
             "later layers reuse the layer's keys and values (KV sharing: num_kv_shared_layers), which would couple "
             "its KV heads across blocks"))),
        "molmo2_text": ModelSpec(name="molmo2_text", model_types=("molmo2_text",), **llama_style,
                                 unsupported=(("heads", "qk_norm_type=olmo", qk_norm_spans_heads),)),
    }
