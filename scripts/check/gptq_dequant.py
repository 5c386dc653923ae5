"""Independent reader for the tests, written from the public description of the Hugging Face GPTQ
checkpoint format (AutoGPTQ / GPTQModel "gptq" v1, as transformers and vLLM load it), with only
numpy: the safetensors container is parsed by hand.

Per quantized Linear `P`:
  P.qweight  int32 (in * bits / 32, out): input rows packed along the input axis, value of input
             32/bits * j + k in bits [bits*k, bits*(k+1)) of row j
  P.qzeros   int32 (groups, out * bits / 32): zero points minus one, packed along the output axis
  P.scales   float16 (groups, out)
  P.g_idx    int32 (in,): the group of each input
  weight[o, i] = scales[g, o] * (q[i, o] - (qzeros[g, o] + 1)), g = g_idx[i]

    python3 gptq_dequant.py MODEL_DIR OUT_DIR PREFIX [PREFIX ...]

Writes OUT_DIR/PREFIX.f32 (out, in) row-major f32 and prints one JSON line with the shapes and
the quantization_config it used.
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"I32": "<i4", "F16": "<f2", "F32": "<f4", "BF16": None, "I64": "<i8", "U8": "u1"}


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        body = f.read()
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        dtype = DTYPES[meta["dtype"]]
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(meta["shape"])
    return tensors


def load_dir(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for f in files:
        tensors.update(read_safetensors(os.path.join(d, f)))
    return tensors


def unpack(packed, bits, axis):
    """Unsigned `bits`-bit values packed low bits first into int32 along `axis`."""
    per = 32 // bits
    u = packed.astype(np.uint32)
    parts = [(u >> np.uint32(bits * k)) & np.uint32((1 << bits) - 1) for k in range(per)]
    stacked = np.stack(parts, axis=axis + 1)  # (..., n, per, ...)
    shape = list(packed.shape)
    shape[axis] *= per
    return stacked.reshape(shape).astype(np.int64)


def main():
    model_dir, out_dir, prefixes = sys.argv[1], sys.argv[2], sys.argv[3:]
    qc = json.load(open(os.path.join(model_dir, "config.json")))["quantization_config"]
    assert qc["quant_method"] == "gptq", qc
    bits = int(qc["bits"])
    tensors = load_dir(model_dir)
    os.makedirs(out_dir, exist_ok=True)
    info = {}
    for p in prefixes:
        q = unpack(tensors[p + ".qweight"], bits, axis=0)  # (in, out)
        zeros = unpack(tensors[p + ".qzeros"], bits, axis=1) + 1  # (groups, out)
        scales = tensors[p + ".scales"].astype(np.float64)  # (groups, out)
        g = tensors[p + ".g_idx"].astype(np.int64)  # (in,)
        w = scales[g, :] * (q - zeros[g, :])  # (in, out)
        w.T.astype("<f4").tofile(os.path.join(out_dir, p + ".f32"))
        info[p] = {"shape": [int(w.shape[1]), int(w.shape[0])]}
    print(json.dumps({"quantization_config": qc, "tensors": info}))


if __name__ == "__main__":
    main()
