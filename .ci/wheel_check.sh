#!/usr/bin/env bash
# Build a wheel the way users do and check it: it carries the compiled extension
# and the Triton kernels, and imports from the wheel alone (not from the
# checkout) with the extension loaded. Needs .venv (made by `make install`).
# Built from a copy of the tree (its tracked and untracked, not ignored files, as a source distribution holds
# them), so that the build writes nothing into the checkout: CI runs this while `make test` runs there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir "$out/src"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$out/src"
(cd "$out/src" && $PY -m pip wheel -q --no-deps --no-build-isolation . -w "$out/dist")
wheel=$(ls "$out"/dist/masked_dora-*.whl)
echo "built $(basename "$wheel")"
$PY - "$wheel" <<'PYEOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
ext = [n for n in names if n.startswith("masked_dora/_C") and n.endswith(".so")]
assert ext, f"the wheel has no compiled extension: {names}"
assert "masked_dora/kernels/__init__.py" in names, "the wheel lacks masked_dora.kernels"
assert not any(n.startswith("kernels/") for n in names), "a top-level 'kernels' package leaked into the wheel"
print("wheel contents ok:", ext[0])
PYEOF
mkdir -p "$out/site" && (cd "$out/site" && $PY -m zipfile -e "$wheel" .)
(cd "$out" && PYTHONPATH="$out/site" "$PY" -c "
import masked_dora, torch, os
assert masked_dora.__file__.startswith('$out/site'), masked_dora.__file__
st = masked_dora.backend_status()
assert st['extension'] == 'loaded', st
assert not torch.cuda.is_initialized()
print('wheel imports with its extension:', st)
")
