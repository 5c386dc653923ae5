"""llama.cpp's speed on the same model and token ids, for `gstick bench decode` and `bench prefill`.

Usage: llama_cpp_speed.py SOURCE.gguf CACHE_DIR MODE IDS N [THREADS]
  MODE   decode: IDS is the prompt, N greedy tokens are timed after the first;
         prefill: IDS (comma-separated token ids) are evaluated in one batch, N repeats.
Makes the F32, Q8_0 and Q4_0 variants of SOURCE with llama.cpp's own quantizer (allow_requantize)
into CACHE_DIR once, then prints one JSON line: tokens/s per variant and each output tensor type.
Needs the llama-cpp-python package (see ../shared/ASSETS.md); a benchmark tool only.
"""
import ctypes
import json
import os
import sys
import time

import llama_cpp
import numpy as np

VARIANTS = {
    "f32": llama_cpp.LLAMA_FTYPE_ALL_F32,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
}


def variant(source, cache, name):
    path = os.path.join(cache, f"{os.path.basename(source)}.{name}.gguf")
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = VARIANTS[name]
        params.allow_requantize = True
        params.nthread = 2
        tmp = path + ".part"
        rc = llama_cpp.llama_model_quantize(source.encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            raise SystemExit(f"llama_model_quantize to {name} failed ({rc})")
        os.replace(tmp, path)
    return path


def decode(llm, ids, tokens):
    llm.reset()
    llm.eval(ids)
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    start = None
    for _ in range(tokens):
        if start is None:
            start = time.perf_counter()
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    # The first eval after `start` is the first timed token, as in gstick's bench.
    return (tokens - 1) / (time.perf_counter() - start) if tokens > 1 else 0.0


def prefill(llm, ids, repeats):
    best = 0.0
    for _ in range(repeats):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        best = max(best, len(ids) / (time.perf_counter() - t))
    return best


def main():
    source, cache, mode, ids, n = sys.argv[1:6]
    threads = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    ids = [int(i) for i in ids.split(",")]
    n = int(n)
    out = {"threads": threads}
    for name in VARIANTS:
        llm = llama_cpp.Llama(
            model_path=variant(source, cache, name),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=max(1024, len(ids) + n + 16),
            n_batch=max(512, len(ids)),
            n_ubatch=max(512, len(ids)),
            verbose=False,
        )
        if mode == "decode":
            llm.eval(ids[:4])  # warm-up
            out[f"{name}_tokens_per_s"] = decode(llm, ids, n)
        else:
            prefill(llm, ids[:8], 1)  # warm-up
            out[f"{name}_tokens_per_s"] = prefill(llm, ids, n)
        del llm
    print(json.dumps(out))


if __name__ == "__main__":
    main()
