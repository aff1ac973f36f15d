"""The masked-dora CLI: an end-to-end smoke run on a tiny BERT, and clear errors for bad arguments."""

import argparse
import importlib.util
import json
import os
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
