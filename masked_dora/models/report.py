"""The pruning report: markdown tables and a PNG of kept channels / heads per layer.

The plot uses matplotlib (Agg backend) when it is installed (``requirements-demo.txt``):
a labelled bar chart that anyone can read is worth the optional dependency. Without
it the report says so and the rest is written.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional


def plot_kept(sizes: List[Dict[str, int]], original: List[Dict[str, int]], path: str, title: str) -> Optional[str]:
    """Bar chart of kept MLP channels and heads per layer; returns ``None`` if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -r requirements-demo.txt); no plot"
    layers = list(range(len(sizes)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "intermediate", "MLP channels"), (axes[1], "heads", "attention heads")):
        ax.bar(layers, [o[key] for o in original], color="#d9d9d9", label="dense")
        ax.bar(layers, [s[key] for s in sizes], color="#3b75af", label="kept")
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.set_xticks(layers)
        ax.set_title(f"kept {label} per layer")
        ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _lm(m: Dict) -> bool:
    return m.get("objective") == "lm"


def _data(m: Dict) -> str:
    data = m.get("data", "stdlib docstrings")
    return "Python's stdlib docstrings" if data == "stdlib docstrings" else f"`{data}`"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_markdown(path: str, metrics: Dict, plot_file: Optional[str], plot_note: Optional[str]) -> None:
    m = metrics
    lines = [f"# masked-dora prune report: `{m['model']}`", "",
             f"Target sparsity: {m['target_sparsity']}, achieved: "
             f"{ {k: round(v['sparsity'], 4) for k, v in m['hardened'].items()} } "
             f"(alignment {m['alignment']}, GQA mode {m['gqa']}, "
             f"allocation {m['allocation']}"
             + (f", hidden mode {m['hidden_mode']}" if m.get("hidden_mode") else "")
             + f"); importance init `{m['importance']}`; "
             + (f"{m['steps']} mask-learning + {m['recovery_steps']} recovery steps (masks fixed)" if m['steps'] else
                f"no mask learning: the importance cut, hardened at once, then {m['recovery_steps']} steps of "
                f"masked DoRA with the masks fixed")
             + f" of batch {m['batch_size']} in {m['train_seconds']:.1f} s "
             + (f"(next-token loss on {m['n_train']} texts of {_data(m)})." if _lm(m) else
                "(distilling the dense model's mean-pooled embeddings"
                + (f", plus {m['hidden_weight']:g} × its layers' hidden states (CoFi's layer loss),"
                   if m.get("hidden_weight") else "")
                + f" on {m['n_train']} "
                + ("stdlib docstrings)." if m.get("data", "stdlib docstrings") == "stdlib docstrings" else
                   f"texts of {_data(m)}).")),
             "",
             "## Size and speed", "",
             "| | dense | pruned | ratio |", "|---|---|---|---|",
             f"| parameters | {m['params_dense']:,} | {m['params_pruned']:,} | "
             f"{m['params_pruned'] / m['params_dense']:.3f} |",
             f"| {'decoder' if _lm(m) else 'encoder'}-layer parameters | {m['layer_params_dense']:,} | "
             f"{m['layer_params_pruned']:,} | "
             f"{m['layer_params_pruned'] / m['layer_params_dense']:.3f} |"]
    for key, label in (("latency_batch", f"latency, batch {m['latency_batch_size']} (ms, median)"),
                       ("latency_single", "latency, 1 sequence (ms, median)")):
        d, p = m[f"{key}_dense_ms"], m[f"{key}_pruned_ms"]
        lines.append(f"| {label} | {d:.1f} | {p:.1f} | {p / d:.3f} |")
    lines += ["", f"Latency on {m['device']}, {m['threads']} threads, sequences of up to {m['max_length']} tokens.",
              "", "## Quality on held-out text", ""]
    if _lm(m):
        lines += [f"{m['n_eval']} held-out texts of {_data(m)}, never trained on: perplexity of their next tokens, "
                  "and how often the model's most likely next token is the dense model's.", "",
                  "| model | held-out perplexity | top-1 agreement with dense |", "|---|---|---|"]
        for row in m["quality"]:
            lines.append(f"| {row['name']} | {_fmt(row['perplexity'])} | {_fmt(row['top1_agreement'])} |")
        lines += ["", f"Dense perplexity on the same tokens: {m['perplexity_dense']:.4f}.", ""]
    else:
        stdlib = m.get("data", "stdlib docstrings") == "stdlib docstrings"
        held = ("held-out docstring paragraphs from modules never used in training" if stdlib
                else f"held-out texts of {_data(m)}, never trained on")
        unit = "paragraph" if stdlib else "text"
        lines += [f"{m['n_eval']} {held}; retrieval: the first half of each {unit} is the query, the second halves "
                  "are the documents.", "",
                  "| model | cosine to dense (mean) | cosine (min) | top-1 agreement with dense | top-1 accuracy |",
                  "|---|---|---|---|---|"]
        for row in m["quality"]:
            lines.append(f"| {row['name']} | {_fmt(row['cosine_mean'])} | {_fmt(row['cosine_min'])} | "
                         f"{_fmt(row['top1_agreement'])} | {_fmt(row['top1_accuracy'])} |")
        lines += ["", f"Dense top-1 accuracy: {_fmt(m['top1_accuracy_dense'])}.", ""]
    per_block = any("hidden" in s for s in m["layer_sizes"])  # hidden_mode="per_block": a count per block
    width = m.get("hidden_size")
    lines += ["## Kept structure per layer", "",
              "| layer | MLP channels | heads | KV heads |"
              + (" hidden channels read and written |" if per_block else ""),
              "|---|---|---|---|" + ("---|" if per_block else "")]
    for i, (s, o) in enumerate(zip(m["layer_sizes"], m["original_sizes"])):
        hidden = f" {s['hidden']} / {width} |" if per_block and "hidden" in s else (" |" if per_block else "")
        lines.append(f"| {i} | {s['intermediate']} / {o['intermediate']} | {s['heads']} / {o['heads']} | "
                     f"{s['kv_heads']} / {o['kv_heads']} |" + hidden)
    lines.append("")
    if plot_file:
        lines += [f"![kept per layer]({plot_file})", ""]
    if plot_note:
        lines += [f"(Plot: {plot_note}.)", ""]
    lines += ["## Checkpoint", "", f"`{m['checkpoint']}`: {m['checkpoint_note']}", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def report_paths(out_dir: str) -> Dict[str, str]:
    return {"markdown": os.path.join(out_dir, "report.md"), "plot": os.path.join(out_dir, "kept_per_layer.png"),
            "metrics": os.path.join(out_dir, "metrics.json"), "model": os.path.join(out_dir, "model"),
            "state": os.path.join(out_dir, "training_state")}
