"""The property-based checks (tests/fuzz/fuzz_ops.py, hypothesis) in a child process, bounded profile.

A crash of a kernel on some generated input (a segfault, an abort) ends the child, not this run: the
child's exit status is the verdict. ``make fuzz`` runs the long profile with fresh seeds for 30 minutes.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("hypothesis")


def test_property_checks_in_a_child_process():
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          os.path.join("tests", "fuzz", "fuzz_ops.py")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (f"fuzz child exited {out.returncode} (negative: killed by a signal)\n"
                                 + out.stdout[-6000:] + out.stderr[-3000:])
    assert " passed" in out.stdout and " failed" not in out.stdout, out.stdout[-3000:]
