#!/usr/bin/env python3
"""Hugging Face transformers (CPU, fp32) perplexity throughput on the same windows as
`gstick bench ppl`: SmolLM2 loaded from its GGUF, the wiki evaluation text tokenized once, the
first WINDOWS non-overlapping windows of SEQLEN tokens.

    python3 bench/ppl_transformers.py GGUF_FILE TEXT_FILE SEQLEN WINDOWS

Prints one JSON line: {"framework": "transformers", "tokens_per_s": ..., "ppl": ..., ...}.
Needs torch, transformers, gguf and accelerate (not dependencies of the project). Uses 2 threads.
"""
import json
import math
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    gguf, text_path, seqlen, windows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(2)
    folder, name = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    with open(text_path, encoding="utf-8") as f:
        ids = tok(f.read(), add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for w in range(windows):
            x = torch.tensor([ids[w * seqlen:(w + 1) * seqlen]])
            logits = model(x).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
            total += nll.item()
            count += seqlen - 1
    seconds = time.perf_counter() - start
    print(json.dumps({
        "framework": "transformers",
        "tokens_per_s": windows * seqlen / seconds,
        "seconds": seconds,
        "ppl": math.exp(total / count),
        "windows": windows,
        "seqlen": seqlen,
    }))


if __name__ == "__main__":
    main()
