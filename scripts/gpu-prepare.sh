#!/usr/bin/env bash
# Build here what scripts/gpu-bench.sh runs on a GPU machine that has python3 with torch
# 2.11.0+cu130 but no Rust: the release binary and the test binaries with CUDA paths, copied to
# .gpu/ (ignored by git; carry it to the machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup
export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1
cargo build --release
mkdir -p .gpu
cp target/release/tchcv .gpu/tchcv
tests="loss_parity box_parity models_parity device data_loader dist cuda_linkage rpn_parity roi_parity faster_rcnn"
for t in $tests; do
    path=$(cargo test --release --no-run --test "$t" --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -n 1)
    cp "$path" ".gpu/test_$t"
done
ls -la .gpu
