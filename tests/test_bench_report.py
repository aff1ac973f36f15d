"""bench/gpu_report.py runs end to end on the CPU (--cpu-smoke) and labels its output as CPU, not GPU."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_report_cpu_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MASKED_DORA_BACKEND")}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_report.py"), "--cpu-smoke",
                          "--sections", "dora_train", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and all(f.startswith("cpu-smoke-") for f in files), files
    report = json.load(open(tmp_path / files[0]))
    assert report["environment"]["cpu_smoke"] is True and report["environment"]["device"] == "cpu"
    rows = report["sections"]["dora_train"]
    impls = {r["impl"] for r in rows}
    assert impls == {"masked_dora_torch", "peft_dora", "peft_lora"}   # no Triton timing on the CPU
    assert all(r["ms"] > 0 and r["peak_mb"] is None for r in rows)      # no (fake) GPU memory numbers
    md = (tmp_path / files[1]).read_text()
    assert "NOT GPU results" in md
