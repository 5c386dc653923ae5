"""Independent reader for the tests: dequantizes tensors of a GGUF file with the `gguf` package
(llama.cpp's own Python reader) and writes each as raw little-endian f32, row-major, so a Rust
test can compare them with our values bit for bit.

    python3 gguf_dequant.py MODEL.gguf OUT_DIR NAME [NAME ...]

Prints one JSON line: {name: {"type": ggml type name, "shape": [rows, cols]}}.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main():
    path, out_dir, names = sys.argv[1], sys.argv[2], set(sys.argv[3:])
    os.makedirs(out_dir, exist_ok=True)
    info = {}
    for t in GGUFReader(path).tensors:
        if t.name not in names:
            continue
        values = dequantize(t.data, t.tensor_type).astype("<f4")
        # GGUF lists dimensions innermost first; rows x cols in row-major order.
        shape = [int(d) for d in reversed(t.shape.tolist())]
        values = values.reshape(shape)
        values.tofile(os.path.join(out_dir, t.name + ".f32"))
        info[t.name] = {"type": t.tensor_type.name, "shape": shape}
    missing = names - set(info)
    if missing:
        sys.exit(f"tensors not in {path}: {sorted(missing)}")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
