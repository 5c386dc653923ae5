"""Independent consumer for the tests: transformers with the compressed-tensors package loads a
compressed-tensors directory as it is (status "compressed", no dequantize option) and computes
the perplexity of the given token ids, with the protocol of ../shared/ASSETS.md (non-overlapping
windows of SEQ tokens, mean NLL over all predicted positions).

    python3 ct_perplexity.py TOKENS_U32 SEQ MODEL_DIR [MODEL_DIR ...]

TOKENS_U32 is a file of little-endian uint32 token ids. Prints one JSON line: a list with, per
directory, the perplexity, the windows, and how many Linears carry a quantization scheme, with
how many of them quantize their input and their weight bits (so a test can tell a quantized
load from a silent float one).
"""
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def perplexity(model_dir, ids, seq):
    windows = len(ids) // seq
    if windows == 0:
        raise SystemExit(f"{len(ids)} tokens make no window of {seq}")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    schemes = [
        s for s in (getattr(m, "quantization_scheme", None) for m in model.modules()) if s is not None
    ]
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            x = torch.from_numpy(ids[w * seq : (w + 1) * seq]).unsqueeze(0)
            logp = torch.log_softmax(model(x).logits[0, :-1].double(), dim=-1)
            nll -= logp.gather(1, x[0, 1:].unsqueeze(1)).sum().item()
            count += seq - 1
    return {
        "dir": model_dir,
        "ppl": float(np.exp(nll / count)),
        "windows": windows,
        "quantized_linears": len(schemes),
        "input_quantized": sum(s.input_activations is not None for s in schemes),
        "weight_bits": sorted({s.weights.num_bits for s in schemes if s.weights}),
    }


def main():
    tokens_path, seq, dirs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(2)
    ids = np.fromfile(tokens_path, dtype="<u4").astype(np.int64)
    print(json.dumps([perplexity(d, ids, seq) for d in dirs]))


if __name__ == "__main__":
    main()
