#!/usr/bin/env bash
# Rehearse the GPU run here, before spending device time on it: scripts/gpu-prepare.sh, then
# scripts/gpu-bench.sh in a copy of the tree as the device tool sends it (tracked and
# unignored files plus .gpu/), with what the GPU machine has and nothing else: no cargo or
# rustc on PATH, a python3 that has torch, numpy and safetensors but neither torchvision nor
# PIL, libtorch found through LD_LIBRARY_PATH. The benchmarks run on the CPU at a small size
# (BENCH_QUICK=1), so the script's flow, its binaries and its Python are checked (a CPU parity
# test calls the Python reference as the CUDA ones do); the CUDA tests skip, saying so. Exit
# status: gpu-bench.sh's.
#   scripts/gpu-rehearse.sh [--no-prepare]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[ "${1:-}" = --no-prepare ] || scripts/gpu-prepare.sh
stage="$(mktemp -d "${TMPDIR:-/tmp}/tchcv-gpu-rehearsal.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/repo" "$stage/bin" "$stage/block" "$stage/out"
# Tracked files deleted from the working tree are not sent, nor copied here.
git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$stage/repo"
cp -r .gpu "$stage/repo/.gpu"
# python3 = the venv's interpreter, with torchvision and PIL made unimportable.
cat > "$stage/block/sitecustomize.py" <<'PY'
import sys


class _Absent:
    """The GPU machine has neither torchvision nor PIL."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torchvision", "PIL"):
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU machine)")
        return None


sys.meta_path.insert(0, _Absent())
PY
cat > "$stage/bin/python3" <<SH
#!/bin/sh
PYTHONPATH="$stage/block\${PYTHONPATH:+:\$PYTHONPATH}" exec "$root/.venv/bin/python" "\$@"
SH
chmod +x "$stage/bin/python3"
cd "$stage/repo"
echo "== rehearsal in $stage/repo (CPU, BENCH_QUICK=1)"
env -i HOME="$HOME" PATH="$stage/bin:/usr/bin:/bin" OUT="$stage/out" \
    GPU_BENCH_DEVICE=cpu BENCH_QUICK=1 bash scripts/gpu-bench.sh
