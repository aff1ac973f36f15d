"""The GPU tests themselves: they skip cleanly where they cannot run, and the TF32 switch cannot break them.

* tests/test_triton_dora.py's CPU-tensor tests run only under the Triton interpreter: on a GPU machine
  (TRITON_INTERPRET unset there, the kernels compiled) they must skip, not fail.
* GPU test modules touch no CUDA at collection time (``torch.cuda.is_available()`` only).
* ``dot_precision`` (the Triton kernels' fp32 dot mode) survives TF32 set through the new
  ``fp32_precision`` API, which makes torch's legacy getters raise.
"""

import ast
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_triton_cpu_tests_skip_without_the_interpreter():
    """tests/test_triton_dora.py as a GPU machine sees it (TRITON_INTERPRET=0): passes and skips only.

    The GPU tests (cuda marker) are left out, and so are the two tests that need no interpreter (they
    are not the point here and cost seconds), so what runs is exactly the interpreter-only tests.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MASKED_DORA_BACKEND")}
    env["TRITON_INTERPRET"] = "0"  # conftest only setdefault()s it: "0" stays, as on a GPU machine
    target = "tests/test_triton_dora.py"
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rs", "-p", "no:cacheprovider", "-m", "not cuda", target,
           "--deselect", f"{target}::test_without_interpreter_cpu_is_refused_clearly",
           "--deselect", f"{target}::test_torch_compile_fullgraph_train_step[torch]"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout[-4000:] + out.stderr[-2000:]
    assert out.returncode == 0, log
    summary = out.stdout.strip().splitlines()[-1]
    assert not re.search(r"\d+ (failed|errors?)\b", summary), log
    skipped = re.search(r"(\d+) skipped", summary)
    assert skipped and int(skipped.group(1)) >= 40, log       # the interpreter-only tests were collected
    assert "passed" not in summary, log                        # none of them ran CPU tensors through compiled kernels
    assert "needs the Triton interpreter" in out.stdout, log


def _collection_time_cuda_calls(path):
    """``torch.cuda.<name>`` uses evaluated at import/collection: module level, decorators, defaults."""
    tree = ast.parse(open(path).read(), filename=path)
    found = []

    def visit(node, in_body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for d in getattr(node, "decorator_list", []):
                visit(d, False)
            for d in node.args.defaults + node.args.kw_defaults:
                if d is not None:
                    visit(d, False)
            return  # the body runs when the test runs, not at collection
        if (not in_body and isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "cuda" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "torch" and node.attr != "is_available"):
            found.append(f"{os.path.basename(path)}:{node.lineno}: torch.cuda.{node.attr}")
        for child in ast.iter_child_nodes(node):
            visit(child, in_body)

    visit(tree, False)
    return found


def test_test_modules_touch_no_cuda_at_collection():
    calls = []
    tests = os.path.join(ROOT, "tests")
    for name in sorted(os.listdir(tests)):
        if name.endswith(".py"):
            calls += _collection_time_cuda_calls(os.path.join(tests, name))
    assert not calls, f"torch.cuda used at collection time (only torch.cuda.is_available() is allowed): {calls}"


def test_collection_check_catches_module_level_cuda(tmp_path):
    bad = tmp_path / "test_bad.py"
    bad.write_text("import torch\nN = torch.cuda.device_count()\n\n"
                   "def test_ok():\n    torch.cuda.synchronize()\n")
    assert _collection_time_cuda_calls(str(bad)) == ["test_bad.py:2: torch.cuda.device_count"]


# ---------------------------------------------------------------- dot_precision and the fp32_precision API

@pytest.fixture
def restore_fp32_precision():
    """Put torch's float32 matmul settings back exactly as they were (new-API values, then the legacy one)."""
    new_api = [(torch.backends, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision")]
    if not all(hasattr(obj, attr) for obj, attr in new_api):
        pytest.skip(f"torch {torch.__version__} has no fp32_precision API")
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr in new_api]
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:
        legacy = None
    yield
    for obj, attr, value in saved:
        setattr(obj, attr, value)
    if legacy is not None and [getattr(o, a) for o, a, _ in saved] == [v for _, _, v in saved]:
        assert torch.get_float32_matmul_precision() == legacy


@pytest.mark.parametrize("api", ["global", "cuda.matmul"])
def test_dot_precision_with_tf32_set_through_fp32_precision(api, restore_fp32_precision):
    common = pytest.importorskip("masked_dora.kernels._common")
    if api == "global":
        torch.backends.fp32_precision = "tf32"           # transformers' tf32=True on recent torch
    else:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    assert common.dot_precision(torch.float32) == "tf32"
    assert common.dot_precision(torch.bfloat16) == "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"   # still the new API (legacy getters still refuse)
    assert common.dot_precision(torch.float32) == "ieee"


def test_dot_precision_follows_the_legacy_setting(restore_fp32_precision):
    common = pytest.importorskip("masked_dora.kernels._common")
    torch.set_float32_matmul_precision("highest")
    assert common.dot_precision(torch.float32) == "ieee"
    torch.set_float32_matmul_precision("high")
    assert common.dot_precision(torch.float32) == "tf32"
    assert common.dot_precision(torch.float16) == "ieee"
    torch.set_float32_matmul_precision("highest")
