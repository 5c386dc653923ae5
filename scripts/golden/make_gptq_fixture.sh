#!/usr/bin/env bash
# Remakes crates/ptq/tests/fixtures/gptq_layer0_k_proj.safetensors: the test writes the weight
# and Hessian of SmolLM2's first k_proj as our observers gather them, then the reference script
# (torch) quantizes them with the test's settings.
#
#   scripts/golden/make_gptq_fixture.sh PYTHON     (a Python with torch, numpy and safetensors)
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:?usage: make_gptq_fixture.sh PYTHON}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
GSTICK_WRITE_GPTQ_INPUTS=$tmp/inputs.safetensors \
  cargo test --release -p gstick-ptq --test gptq_reference -- --nocapture || true
"$py" scripts/golden/gptq_reference.py "$tmp/inputs.safetensors" \
  crates/ptq/tests/fixtures/gptq_layer0_k_proj.safetensors \
  --bits 4 --group 64 --sym --act-order --static-groups --damp 0.01 --block 128
