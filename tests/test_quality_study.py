"""bench/quality.py (the learned-mask study) runs end to end: a smoke run on a tiny BERT, not the study."""

import importlib.util
import json
import os
import sys

import pytest

from tiny_models import tiny_bert_dir

HAS_TP = importlib.util.find_spec("torch_pruning") is not None


@pytest.fixture(scope="module")
def quality():
    path = os.path.join(os.path.dirname(__file__), "..", "bench", "quality.py")
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_study_smoke_run(quality, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    methods = ["learned", "fixed_activation", "cut_activation", "learned_global"] + (["tp_cut"] if HAS_TP else [])
    rc = quality.main(["--model", tiny_bert_dir(str(tmp_path / "tiny")), "--methods", *methods,
                       "--sparsities", "0.5", "--seeds", "0", "1", "--steps", "2", "--recovery-steps", "1",
                       "--batch-size", "4", "--max-length", "16", "--train-texts", "8", "--eval-texts", "12",
                       "--calibration-batches", "1", "--mlp-alignment", "8", "--out", str(tmp_path), "--tag", "q"])
    assert rc == 0
    report = json.loads((tmp_path / "q.json").read_text())
    runs = {(r["method"], r["seed"]) for r in report["rows"]}
    assert ("learned", 1) in runs and ("cut_activation", 0) in runs and ("cut_activation", 1) not in runs
    assert all(-1.0 <= r["cosine_mean"] <= 1.0 and 0.0 <= r["top1_agreement"] <= 1.0 for r in report["rows"])
    learned = [r for r in report["rows"] if r["method"] == "learned"]
    assert {"units_moved_by_learning", "sign_vs_hardened"} <= set(learned[0]["info"])
    summary = {s["method"]: s for s in report["summary"]}
    assert summary["learned"]["seeds"] == 2 and summary["learned"]["cosine_spread"] >= 0.0
    md = (tmp_path / "q.md").read_text()
    assert "| 50% | learned | 2 |" in md and "## Every run" in md
    if HAS_TP:  # Torch-Pruning removed whole heads and MLP channels, as asked
        tp = next(r for r in report["rows"] if r["method"] == "tp_cut")
        assert tp["info"]["kept_heads"] == [2, 2] and tp["info"]["kept_mlp"] == [32, 32]


def test_hidden_state_methods_run(quality, tmp_path, monkeypatch):
    """The *_hs methods train on the layer-wise loss; --hidden-weight overrides theirs and labels the rows."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = quality.main(["--model", tiny_bert_dir(str(tmp_path / "tiny")), "--methods", "fixed_activation_global_hs",
                       "learned_global_hs_learn", "fixed_activation_global", "--hidden-weight", "0.5",
                       "--sparsities", "0.5", "--seeds", "0", "--steps", "2", "--recovery-steps", "1",
                       "--batch-size", "4", "--max-length", "16", "--train-texts", "8", "--eval-texts", "12",
                       "--calibration-batches", "1", "--mlp-alignment", "8", "--out", str(tmp_path), "--tag", "h"])
    assert rc == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "h.json").read_text())["rows"]}
    assert set(rows) == {"fixed_activation_global_hs (λ=0.5)", "learned_global_hs_learn (λ=0.5)",
                         "fixed_activation_global"}
    assert rows["fixed_activation_global_hs (λ=0.5)"]["info"]["hidden_weight"] == 0.5
    assert "hidden_weight" not in rows["fixed_activation_global"]["info"]
    md = (tmp_path / "h.md").read_text()
    assert "- `fixed_activation_global_hs (λ=0.5)`: fixed_activation_global trained with" in md


def test_methods_are_described(quality):
    assert {"learned", "fixed_activation", "torch_pruning"} <= set(quality.METHODS)
    assert all(m.kind in quality.RUNNERS and m.description for m in quality.METHODS.values())


def test_reports_merge(quality, tmp_path):
    env = {"date": "d", "machine": "m", "torch": "t", "transformers": "x", "peft": "p", "torch_pruning": None,
           "command": "c", "task": "same"}
    row = lambda method, seed, cos: {"method": method, "sparsity": 0.25, "seed": seed, "cosine_mean": cos,  # noqa: E731
                                     "cosine_min": 0.5, "top1_agreement": 0.6, "seconds": 1.0, "info": {"params": 1}}
    for name, rows in (("a", [row("learned", 0, 0.9), row("learned", 1, 0.92)]), ("b", [row("fixed_activation", 0, 0.95)])):
        (tmp_path / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows}))
    assert quality.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path),
                         "--tag", "m"]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert {s["method"]: round(s["cosine_spread"], 6) for s in merged["summary"]} == {"learned": 0.02,
                                                                                    "fixed_activation": 0.0}
    other = dict(env, task="other")
    (tmp_path / "c.json").write_text(json.dumps({"environment": other, "rows": []}))
    with pytest.raises(SystemExit, match="different tasks"):
        quality.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "c.json"), "--out", str(tmp_path)])


def test_merge_labels_stale_rows(quality, tmp_path):
    """--stale: a method's rows from before a fix keep a dated label, not averaged with the new ones."""
    def report(date, cosine):
        row = {"method": "learned", "sparsity": 0.25, "seed": 0, "cosine_mean": cosine, "cosine_min": cosine,
               "top1_agreement": 0.5, "seconds": 1.0, "info": {}}
        env = {"date": date, "task": "t", "command": f"run {date}", "machine": "m", "torch": "t",
               "transformers": "t", "peft": "p", "torch_pruning": None}
        return {"environment": env, "rows": [row, dict(row, method="fixed_activation")]}
    paths = []
    for date, cosine in (("2026-11-27T000000Z", 0.8), ("2026-11-28T000000Z", 0.9)):
        paths.append(str(tmp_path / f"{date}.json"))
        (tmp_path / f"{date}.json").write_text(json.dumps(report(date, cosine)))
    assert quality.main(["--merge", *paths, "--stale", "learned", "--stale-before", "2026-11-28", "--stale-note", "init bug", "--out", str(tmp_path),
                         "--tag", "m"]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    summary = {s["method"]: s for s in merged["summary"]}
    assert summary["learned"]["cosine"] == 0.9 and summary["learned (stale 2026-11-27)"]["cosine"] == 0.8
    assert summary["fixed_activation"]["seeds"] == 2  # not stale: both files' rows together
    assert "init bug" in (tmp_path / "m.md").read_text() and "--stale learned" in merged["environment"]["command"]
