"""The masked-dora CLI: an end-to-end smoke run on a tiny BERT, and clear errors for bad arguments."""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from masked_dora.cli import build_parser, main

from tiny_models import tiny_bert_dir as _tiny_bert_dir


def test_cli_prune_with_no_mask_learning_keeps_the_importance_cut(tmp_path):
    """--steps 0: the fixed-cut method (harden the importance init at once, train adapters only)."""
    model_dir = _tiny_bert_dir(str(tmp_path / "tiny"))
    out = tmp_path / "out"
    rc = main(["prune", "--model", model_dir, "--out", str(out), "--sparsity", "0.5", "--mlp-alignment", "8",
               "--steps", "0", "--recovery-steps", "2", "--batch-size", "4", "--max-length", "16",
               "--train-texts", "8", "--eval-texts", "12", "--calibration-batches", "1", "--latency-batch-size", "4",
               "--importance", "magnitude", "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["hardened"]["mlp"]["sparsity"] == 0.5
    assert all(e.get("penalty", 0.0) == 0.0 for e in metrics["training_log"])  # recovery only: no penalty
    with pytest.raises(SystemExit, match="--importance none gives no cut"):
        main(["prune", "--model", model_dir, "--out", str(tmp_path / "o2"), "--steps", "0", "--importance", "none"])


def test_cli_prune_end_to_end(tmp_path):
    model_dir = _tiny_bert_dir(str(tmp_path / "tiny"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "masked_dora", "prune", "--model", model_dir, "--out", str(out),
           "--sparsity", "0.5", "--mlp-alignment", "8", "--steps", "2", "--recovery-steps", "1",
           "--batch-size", "4", "--max-length", "16", "--train-texts", "8", "--eval-texts", "12",
           "--calibration-batches", "1", "--latency-batch-size", "4", "--importance", "magnitude", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    assert "report:" in res.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hardened"]["mlp"] == {"kept": 64, "total": 128, "sparsity": 0.5}
    assert metrics["hardened"]["heads"]["kept"] == 4
    assert metrics["compaction_max_abs_diff"] < 1e-4
    assert metrics["params_pruned"] < metrics["params_dense"]
    assert [s["intermediate"] for s in metrics["layer_sizes"]] == [32, 32]
    for row in metrics["quality"]:
        assert -1.0 <= row["cosine_mean"] <= 1.0 and 0.0 <= row["top1_agreement"] <= 1.0
    report = (out / "report.md").read_text()
    assert "parameters" in report and "top-1 agreement" in report and "load_compact" in report
    assert "Target sparsity: {'mlp': 0.5, 'heads': 0.5}, achieved: {'mlp': 0.5, 'heads': 0.5}" in report
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "kept_per_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the checkpoint loads (pruned heads: through masked_dora) and the training state is there
    from masked_dora.models import load_compact

    model = load_compact(str(out / "model"))
    assert model.encoder.layer[0].intermediate.dense.out_features == 32
    assert (out / "training_state" / "masked_dora_adapter.safetensors").exists()


@pytest.mark.parametrize("argv, match", [
    (["prune", "--out", "x", "--sparsity", "1.5"], "--sparsity: expected a fraction"),
    (["prune", "--out", "x", "--steps", "-1"], "--steps: expected a non-negative int"),
    (["prune", "--out", "x", "--recovery-steps", "-2"], "--recovery-steps: expected a non-negative int"),
    (["prune", "--out", "x", "--gqa", "heads"], "--gqa"),
    (["prune", "--out", "x", "--hidden-weight", "-1"], "--hidden-weight: expected 'auto' or a finite number >= 0"),
    (["prune", "--out", "x", "--hidden-weight", "inf"], "--hidden-weight: expected 'auto' or a finite number >= 0"),
    (["prune", "--out", "x", "--hidden-weight", "lots"], "--hidden-weight: expected 'auto' or a number >= 0"),
    (["prune", "--out", "x", "--teacher-cache-mb", "-1"], "--teacher-cache-mb: expected a non-negative int"),
    (["prune"], "--out"),
])
def test_cli_rejects_bad_arguments(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_cli_rejects_unknown_model_and_groups(tmp_path):
    with pytest.raises(SystemExit, match="--model"):
        main(["prune", "--model", str(tmp_path / "missing-model"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="target_groups"):
        main(["prune", "--groups", "mlp,ffn", "--out", str(tmp_path / "o")])


def test_every_prune_option_has_help_and_the_help_shows_defaults(capsys):
    from masked_dora.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    prune = sub.choices["prune"]
    assert [a.option_strings for a in prune._actions if not a.help] == []
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--help"])
    text = capsys.readouterr().out
    assert "(default: activation)" in text and "(default: 150)" in text and "(default: global)" in text


TEXT_FILE = """The quick brown fox jumps over the lazy dog near the river bank today.

A pruned model keeps the channels that matter and drops the ones that do not.

Masked DoRA learns a gate per channel while the adapter trains on your own text.

Compaction removes the pruned rows and columns and writes a smaller checkpoint.

Held-out perplexity says how well the pruned model still predicts the next token.

Every text here is short, but the command runs the same way on a large file.

Tokens are characters for this tiny tokenizer, so each text is many tokens long.

The last paragraph ends the file; the split keeps a quarter of them for evaluation.
"""


def test_cli_prunes_a_causal_lm_on_a_users_text_file(tmp_path):
    """--data FILE with a causal LM: --objective auto picks next-token loss, evaluates held-out perplexity,
    and with --allocation uniform writes a plain checkpoint that AutoModelForCausalLM loads."""
    from tiny_models import tiny_llama_dir
    from transformers import AutoModelForCausalLM

    model_dir = tiny_llama_dir(str(tmp_path / "tiny-llama"))
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT_FILE)
    out = tmp_path / "out"
    rc = main(["prune", "--model", model_dir, "--out", str(out), "--data", str(data), "--sparsity", "0.5",
               "--mlp-alignment", "8", "--allocation", "uniform", "--steps", "1", "--recovery-steps", "1",
               "--batch-size", "2", "--max-length", "24", "--eval-texts", "2", "--calibration-batches", "1",
               "--latency-batch-size", "2", "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "lm" and metrics["data"] == str(data)
    assert metrics["hidden_weight"] == 0.0  # --hidden-weight auto: no hidden-state term for the lm objective
    assert metrics["n_train"] == 6 and metrics["n_eval"] == 2
    assert metrics["compaction_max_abs_diff"] < 1e-3
    for row in metrics["quality"]:
        assert 1.0 < row["perplexity"] < 1e4 and 0.0 <= row["top1_agreement"] <= 1.0
    assert metrics["perplexity_dense"] > 1.0
    report = (out / "report.md").read_text()
    assert "held-out perplexity" in report and "next-token loss on 6 texts of" in report
    assert "AutoModelForCausalLM.from_pretrained" in report
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert model.model.layers[0].mlp.down_proj.in_features == 32


def test_cli_prunes_a_vision_language_models_language_model(tmp_path):
    """--model a VLM (a tiny LLaVA around a Llama): --objective auto trains its language model on the user's text
    with the next-token loss, the vision tower and projector come out as they went in, and the plain checkpoint
    loads with AutoModelForImageTextToText (the CLI loaded it as an encoder: AutoModel, the embedding objective).
    --objective embedding is refused, naming the model type."""
    import transformers
    from tiny_models import _char_tokenizer
    from tiny_vlm_configs import TEXT as TEXT_CONFIG, llava

    model_dir = str(tmp_path / "tiny-llava")
    vocab = _char_tokenizer(model_dir)
    config = llava(transformers, transformers.LlamaConfig(**dict(TEXT_CONFIG, vocab_size=vocab + 8), head_dim=8))
    config.image_token_id = vocab + 4  # beyond the tokenizer's ids: text never holds an image token
    torch.manual_seed(0)
    dense = transformers.LlavaForConditionalGeneration(config)
    dense.save_pretrained(model_dir)
    with_processor = importlib.util.find_spec("PIL") is not None  # an image processor needs Pillow
    if with_processor:
        image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 28},
                                                             crop_size={"height": 28, "width": 28})
        transformers.LlavaProcessor(image_processor=image_processor, patch_size=14,
                                    tokenizer=transformers.AutoTokenizer.from_pretrained(model_dir),
                                    vision_feature_select_strategy="default").save_pretrained(model_dir)
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT_FILE)
    out = tmp_path / "out"
    common = ["--model", model_dir, "--data", str(data), "--sparsity", "0.5", "--mlp-alignment", "8",
              "--allocation", "uniform", "--steps", "1", "--recovery-steps", "1", "--batch-size", "2",
              "--max-length", "24", "--eval-texts", "2", "--calibration-batches", "1", "--latency-batch-size", "2",
              "--no-progress"]
    with pytest.raises(SystemExit, match=r"--objective embedding: .* is a vision-language model \('llava'\)"):
        main(["prune", "--out", str(out), "--objective", "embedding"] + common)
    assert main(["prune", "--out", str(out)] + common) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "lm" and metrics["compaction_max_abs_diff"] < 1e-3
    assert metrics["hidden_size"] == 32
    assert "AutoModelForImageTextToText.from_pretrained" in (out / "report.md").read_text()
    pruned = transformers.AutoModelForImageTextToText.from_pretrained(str(out / "model"))
    if with_processor:  # saved with it: it takes images
        processor = transformers.AutoProcessor.from_pretrained(str(out / "model"))
        assert type(processor).__name__ == "LlavaProcessor" and processor.image_processor.crop_size["height"] == 28
    else:  # no processor to copy: the tokenizer, as for a text model
        saved, source = (transformers.AutoTokenizer.from_pretrained(d) for d in (str(out / "model"), model_dir))
        assert saved.get_vocab() == source.get_vocab() and not (out / "model" / "processor_config.json").exists()
    assert pruned.model.language_model.layers[0].mlp.down_proj.in_features == 32
    dense_params = dict(dense.named_parameters())
    untouched = [(n, p) for n, p in pruned.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    assert untouched and all(torch.equal(p, dense_params[n]) for n, p in untouched)


def test_cli_prunes_an_audio_language_models_language_model(tmp_path):
    """--model an audio LM (a tiny Qwen2-Audio around a Qwen2): the CLI loads it with the auto class that maps it
    (transformers maps audio LMs to AutoModelForSeq2SeqLM, not AutoModelForImageTextToText, so it could not load
    one: "cannot load ... as a vision-language model"), trains its language model on the text, and the plain
    checkpoint reloads with the auto class the report names; the audio tower and projector come out as they
    went in."""
    import transformers
    from tiny_audio_lms import available, qwen2_audio
    from tiny_models import _char_tokenizer

    if not available("qwen2_audio"):
        pytest.skip("this transformers has no Qwen2-Audio")
    model_dir = str(tmp_path / "tiny-qwen2-audio")
    vocab = _char_tokenizer(model_dir)
    config = qwen2_audio(transformers)
    config.text_config.vocab_size, config.audio_token_index = vocab + 8, vocab + 4  # never in the text
    torch.manual_seed(0)
    dense = transformers.Qwen2AudioForConditionalGeneration(config)
    dense.save_pretrained(model_dir)
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT_FILE)
    out = tmp_path / "out"
    assert main(["prune", "--model", model_dir, "--data", str(data), "--out", str(out), "--allocation", "uniform"]
                + SMALL_RUN) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "lm" and metrics["compaction_max_abs_diff"] < 1e-3
    auto = re.search(r"`(\w+)\.from_pretrained\(path\)`", metrics["checkpoint_note"]).group(1)
    assert auto == "AutoModelForSeq2SeqLM" and auto in (out / "report.md").read_text()
    pruned = getattr(transformers, auto).from_pretrained(str(out / "model"))
    assert type(pruned).__name__ == "Qwen2AudioForConditionalGeneration"
    assert pruned.model.language_model.layers[0].mlp.down_proj.in_features == 48  # 25% of 64 (the default)
    dense_params = dict(dense.named_parameters())
    untouched = [(n, p) for n, p in pruned.named_parameters() if "audio_tower" in n or "multi_modal_projector" in n]
    assert untouched and all(torch.equal(p, dense_params[n]) for n, p in untouched)


def test_cli_refuses_image_models_it_cannot_train_on_text(tmp_path):
    """BLIP-2's forward needs pixel_values in every input, Mllama skips its cross-attention blocks on text alone
    (the activation importance then failed: "saw no activity in the groups ['mlp_1', 'heads_1']"), and a
    two-tower CLIPModel embeds text only beside an image: the CLI, which trains on text, refuses them before it
    loads any weights (BLIP-2 and CLIP crashed in the first forward with a TypeError / "You have to specify
    pixel_values")."""
    import transformers
    from tiny_vlm_configs import blip_2, mllama

    configs = [("blip", blip_2(transformers)), ("clip", transformers.CLIPConfig())]
    if hasattr(transformers, "MllamaConfig"):
        configs.append(("mllama", mllama(transformers)))
    if hasattr(transformers, "IdeficsConfig"):  # a VLM whose config is its language model's (its own spec)
        configs.append(("idefics", transformers.IdeficsConfig()))
    for name, config in configs:
        model_dir = str(tmp_path / name)
        config.save_pretrained(model_dir)  # the config alone: the refusal comes first
        match = ("needs an image in its inputs to run every block" if name in ("blip", "mllama")
                 else f"'{name}' model with a vision tower")
        with pytest.raises(SystemExit, match=f"--model: .*{match}.*Python API"):
            main(["prune", "--model", model_dir, "--out", str(tmp_path / "out")] + SMALL_RUN)
        assert not (tmp_path / "out").exists()


def test_cli_refuses_image_and_speech_encoders_before_loading_anything(tmp_path):
    """Swin (prunable since its stages got a spec), ViT and Wav2Vec2 take pixel_values / input_values, not text: the
    CLI, which trains on text, refuses them by name with their input, whatever the objective, before it loads
    anything or writes the output (it crashed in AutoTokenizer with "Couldn't instantiate the backend
    tokenizer")."""
    import transformers

    for name in ("SwinConfig", "ViTConfig", "Wav2Vec2Config"):
        if not hasattr(transformers, name):
            continue
        config = getattr(transformers, name)()
        model_dir = str(tmp_path / config.model_type)
        config.save_pretrained(model_dir)  # the config alone: the refusal comes first
        for objective in ("auto", "lm"):
            with pytest.raises(SystemExit, match=rf"--model: .*'{config.model_type}' model whose input is "
                                                 rf"(pixel_values|input_values).*Python API"):
                main(["prune", "--model", model_dir, "--out", str(tmp_path / "out"), "--objective", objective]
                     + SMALL_RUN)
        assert not (tmp_path / "out").exists()


def test_cli_embedding_objective_on_jsonl_and_clear_data_errors(tmp_path):
    model_dir = _tiny_bert_dir(str(tmp_path / "tiny"))
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(json.dumps({"body": p}) for p in TEXT_FILE.split("\n\n")) + "\n")
    out = tmp_path / "out"
    common = ["--sparsity", "0.5", "--mlp-alignment", "8", "--steps", "0", "--recovery-steps", "1",
              "--batch-size", "4", "--max-length", "16", "--eval-texts", "2", "--calibration-batches", "1",
              "--latency-batch-size", "2", "--no-progress"]
    assert main(["prune", "--model", model_dir, "--out", str(out), "--data", str(data), "--text-field", "body"]
                + common) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "embedding" and metrics["n_eval"] == 2
    assert -1.0 <= metrics["quality"][0]["cosine_mean"] <= 1.0
    with pytest.raises(SystemExit, match=r"--data: data: .*corpus.jsonl:1: expected an object with a string field "
                                         r"'text'"):
        main(["prune", "--model", model_dir, "--out", str(out), "--data", str(data)] + common)
    with pytest.raises(SystemExit, match="--data: data: expected a text or JSONL file"):
        main(["prune", "--model", model_dir, "--out", str(out), "--data", str(tmp_path / "missing.txt")] + common)
    from tiny_models import _char_tokenizer, tiny_model

    distil_dir = str(tmp_path / "distil")  # DistilBERT has no causal-LM class
    _char_tokenizer(distil_dir)
    tiny_model("distilbert").save_pretrained(distil_dir)
    with pytest.raises(SystemExit, match="--objective lm: cannot load .* as a causal LM"):
        main(["prune", "--model", distil_dir, "--out", str(out), "--objective", "lm"] + common)


SMALL_RUN = ["--mlp-alignment", "8", "--steps", "1", "--recovery-steps", "1", "--batch-size", "2", "--max-length",
             "16", "--train-texts", "8", "--eval-texts", "4", "--calibration-batches", "1", "--latency-batch-size",
             "2", "--no-progress"]


def test_cli_prunes_the_hidden_dimension_per_block(tmp_path):
    """--groups mlp,heads,hidden with the default --hidden-mode per_block, on a BERT (a LayerNorm family, only
    per_block can prune its hidden size): 25% of each block's residual channels, compacted exactly, saved for
    load_compact, and the report says the mode."""
    from masked_dora.models import load_compact
    from masked_dora.nn import CompactLinear

    model_dir = _tiny_bert_dir(str(tmp_path / "tiny"))
    out = tmp_path / "out"
    rc = main(["prune", "--model", model_dir, "--out", str(out), "--groups", "mlp,heads,hidden",
               "--sparsity", "0.5", "--hidden-sparsity", "0.25", *SMALL_RUN])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hidden_mode"] == "per_block"
    assert metrics["hidden_weight"] == 0.0  # auto: the hidden-state term was measured without hidden pruning
    assert metrics["hardened"]["hidden"] == {"kept": 48, "total": 64, "sparsity": 0.25}  # 24 of 32 per block
    assert metrics["compaction_max_abs_diff"] < 1e-4
    report = (out / "report.md").read_text()
    assert "hidden mode per_block" in report and "| hidden channels read and written |" in report
    kept = [int(n) for n in re.findall(r"\| (\d+) / 32 \|\n", report)]  # per block (--allocation global)
    assert sum(kept) == 48 and len(kept) == 2, report
    model = load_compact(str(out / "model"))
    layer = model.encoder.layer[0]
    assert layer.attention.self.query.in_features == 24 and isinstance(layer.output.dense, CompactLinear)


def test_cli_prunes_the_hidden_dimension_globally_to_a_plain_checkpoint(tmp_path):
    from tiny_models import tiny_llama_dir
    from transformers import AutoModelForCausalLM

    model_dir = tiny_llama_dir(str(tmp_path / "tiny-llama"))
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT_FILE)
    out = tmp_path / "out"
    rc = main(["prune", "--model", model_dir, "--out", str(out), "--data", str(data), "--groups", "mlp,hidden",
               "--hidden-mode", "global", "--allocation", "uniform", "--sparsity", "0.25", *SMALL_RUN])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hidden_mode"] == "global" and metrics["hardened"]["hidden"]["kept"] == 24
    assert metrics["compaction_max_abs_diff"] < 1e-3
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert model.config.hidden_size == 24 and model.model.layers[0].mlp.down_proj.out_features == 24


def test_cli_refuses_the_embedding_objective_with_a_globally_pruned_stream(tmp_path):
    """The pruned model's embeddings would be 24 wide, the dense model's 32: refused before training (it crashed in
    the recovery steps, and before that at the end of the run)."""
    from tiny_models import tiny_llama_dir

    model_dir = tiny_llama_dir(str(tmp_path / "tiny-llama"))
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT_FILE)
    with pytest.raises(SystemExit, match="--objective embedding: with --hidden-mode global"):
        main(["prune", "--model", model_dir, "--out", str(tmp_path / "out"), "--data", str(data), "--objective",
              "embedding", "--groups", "mlp,hidden", "--hidden-mode", "global", "--allocation", "uniform",
              "--sparsity", "0.25", *SMALL_RUN])


def test_cli_hidden_refusals_name_the_option(tmp_path):
    bert = _tiny_bert_dir(str(tmp_path / "tiny"))
    with pytest.raises(SystemExit, match="--hidden-mode global: needs --allocation uniform"):
        main(["prune", "--model", bert, "--out", str(tmp_path / "o1"), "--groups", "mlp,hidden",
              "--hidden-mode", "global", *SMALL_RUN])
    with pytest.raises(SystemExit, match="--model .*LayerNorm"):
        main(["prune", "--model", bert, "--out", str(tmp_path / "o2"), "--groups", "mlp,hidden",
              "--hidden-mode", "global", "--allocation", "uniform", *SMALL_RUN])
    assert not (tmp_path / "o1").exists()


def _spy_hidden_loss(monkeypatch):
    """Count the calls of the hidden-state loss and record the teacher caches' budgets."""
    from masked_dora.models import distill

    calls, budgets = [], []
    loss = distill.hidden_state_loss
    monkeypatch.setattr(distill, "hidden_state_loss", lambda *a: calls.append(1) or loss(*a))
    init = distill.TeacherHiddenCache.__init__
    monkeypatch.setattr(distill.TeacherHiddenCache, "__init__", lambda self, b=0: budgets.append(b) or init(self, b))
    return calls, budgets


def test_cli_hidden_weight_defaults_to_3_for_the_embedding_objective(tmp_path, monkeypatch):
    """--hidden-weight auto is 3 for MLP channels and heads of an encoder: the training loss has the term (and
    the cut is scored without it), the cache gets --teacher-cache-mb, the report and metrics say it; 0 is off."""
    model_dir = _tiny_bert_dir(str(tmp_path / "tiny"))
    run = SMALL_RUN + ["--steps", "0", "--recovery-steps", "2"]
    calls, budgets = _spy_hidden_loss(monkeypatch)
    assert main(["prune", "--model", model_dir, "--out", str(tmp_path / "a"), "--teacher-cache-mb", "7"] + run) == 0
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["hidden_weight"] == 3.0 and len(calls) == 2  # one per training step, none in the calibration
    assert 7 << 20 in budgets
    assert "plus 3 × its layers' hidden states" in (tmp_path / "a" / "report.md").read_text()
    loss_with = metrics["training_log"][0]["loss"]
    calls.clear()
    assert main(["prune", "--model", model_dir, "--out", str(tmp_path / "b"), "--hidden-weight", "0"] + run) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["hidden_weight"] == 0.0 and not calls
    assert "hidden states" not in (tmp_path / "b" / "report.md").read_text()
    assert metrics["training_log"][0]["loss"] < loss_with  # same seed, same first batch: the term adds to it


def test_cli_hidden_weight_auto_says_where_it_was_not_measured():
    from masked_dora.cli import resolve_hidden_weight

    assert resolve_hidden_weight("auto", "embedding", ("mlp", "heads"), "per_block") == (3.0, None)
    for groups in (("heads",), ("mlp",)):
        weight, note = resolve_hidden_weight("auto", "embedding", groups, "per_block")
        assert weight == 3.0 and "measured with MLP channels and heads pruned together" in note
    weight, note = resolve_hidden_weight("auto", "embedding", ("mlp", "heads", "hidden"), "per_block")
    assert weight == 0.0 and "0.7031 cosine at 3 against 0.7131 at 0" in note
    assert resolve_hidden_weight("auto", "lm", ("mlp", "heads"), "per_block")[0] == 0.0
    weight, note = resolve_hidden_weight(-0.0, "embedding", ("mlp", "heads"), "per_block")
    assert str(weight) == "0.0" and note is None  # -0 is written as 0
    assert "measured once on the demo, no gain" in resolve_hidden_weight(3.0, "embedding", ("mlp", "hidden"),
                                                                         "per_block")[1]


def test_cli_hidden_weight_refusals_and_per_block_hidden(tmp_path, monkeypatch):
    """A weight > 0 is refused for the lm objective (given, or found by auto) and with --hidden-mode global,
    before the model loads; with per-block hidden pruning an explicit weight trains with the term."""
    from tiny_models import tiny_llama_dir

    with pytest.raises(SystemExit, match="--hidden-weight: --objective lm trains on the next-token loss"):
        main(["prune", "--model", str(tmp_path / "not-loaded"), "--out", str(tmp_path / "o"), "--objective", "lm",
              "--hidden-weight", "3"])
    with pytest.raises(SystemExit, match="--hidden-weight: with --hidden-mode global"):
        main(["prune", "--model", str(tmp_path / "not-loaded"), "--out", str(tmp_path / "o"), "--groups",
              "mlp,hidden", "--hidden-mode", "global", "--allocation", "uniform", "--hidden-weight", "1"])
    llama = tiny_llama_dir(str(tmp_path / "tiny-llama"))
    with pytest.raises(SystemExit, match="--hidden-weight: --objective lm"):  # --objective auto found lm
        main(["prune", "--model", llama, "--out", str(tmp_path / "o"), "--hidden-weight", "1"] + SMALL_RUN)
    assert not (tmp_path / "o").exists()
    bert = _tiny_bert_dir(str(tmp_path / "tiny"))
    calls, _ = _spy_hidden_loss(monkeypatch)
    out = tmp_path / "per-block"
    assert main(["prune", "--model", bert, "--out", str(out), "--groups", "mlp,heads,hidden", "--hidden-weight", "1",
                 "--sparsity", "0.5", "--hidden-sparsity", "0.25"] + SMALL_RUN) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hidden_weight"] == 1.0 and len(calls) == 2  # 1 mask-learning + 1 recovery step
    assert metrics["compaction_max_abs_diff"] < 1e-4


def test_cli_bad_data_is_refused_before_the_model_or_the_output(tmp_path):
    """A --data file that cannot be used is refused before the model is looked up and before --out is made."""
    (tmp_path / "empty.txt").write_text("\n")
    bert = _tiny_bert_dir(str(tmp_path / "tiny"))
    for model in (bert, str(tmp_path / "not-a-model")):
        for data, match in ((tmp_path / "empty.txt", "--data: .*expected at least 2 texts"),
                            (tmp_path / "missing.txt", "--data: .*not a file")):
            with pytest.raises(SystemExit, match=match):
                main(["prune", "--model", model, "--out", str(tmp_path / "o"), "--data", str(data), "--no-progress"])
            assert not (tmp_path / "o").exists()  # it was made (and the model loaded) before the refusal
