#!/usr/bin/env bash
# Regenerates crates/export/src/onnx/proto.rs from the onnx.proto in the pinned onnx wheel.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
python3 -m pip download --quiet --no-deps --only-binary=:all: onnx==1.23.2 -d "$tmp"
python3 - "$tmp" <<'PY'
import glob, sys, zipfile
z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/onnx-*.whl")[0])
open(sys.argv[1] + "/onnx.proto", "wb").write(z.read("onnx/onnx.proto"))
PY
cargo run --release -- "$tmp/onnx.proto" "$tmp/out"
python3 - "$tmp/out/onnx.rs" ../../crates/export/src/onnx/proto.rs <<'PY'
import sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if not l.lstrip().startswith("///")]
header = """// Generated: do not edit. The ONNX protobuf messages (package `onnx`, IR version 12), produced by
// scripts/onnx-codegen (prost-build 0.14 with protox, so no protoc is needed) from onnx.proto of
// the `onnx` 1.23.2 Python wheel, with the proto's comments removed. See the ONNX specification
// (onnx.ai) for field meanings.
#![allow(clippy::all, missing_docs)]
"""
open(sys.argv[2], "w").write(header + "\n".join(lines) + "\n")
PY
rm -rf "$tmp"
