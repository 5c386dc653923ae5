"""llm-compressor's GPTQ on the same model and calibration windows as `gstick bench gptq`.

Usage: gptq_llmcompressor.py HF_DIR WINDOWS_JSON BITS GROUP [THREADS]
  HF_DIR        the float model as a Hugging Face directory (gstick writes it from the GGUF)
  WINDOWS_JSON  a JSON list of token-id lists: the calibration windows gstick used
Runs `oneshot` with a GPTQModifier (symmetric int BITS, groups of GROUP, static activation
order, dampening 0.01, lm_head kept) on the CPU and prints one JSON line with the seconds the
`oneshot` call took. Needs the llmcompressor package (see ../shared/ASSETS.md); a benchmark
tool only, never needed by the build or the tests.
"""
import json
import sys
import time


def main():
    hf_dir, windows_path, bits, group = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    windows = json.load(open(windows_path))
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    data = Dataset.from_dict(
        {"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]}
    )
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(
            num_bits=bits, type="int", symmetric=True, strategy="group", group_size=group
        ),
    )
    recipe = GPTQModifier(
        config_groups={"group_0": scheme},
        ignore=["lm_head"],
        actorder="static",
        dampening_frac=0.01,
    )
    start = time.perf_counter()
    oneshot(
        model=model,
        dataset=data,
        recipe=recipe,
        max_seq_length=max(len(w) for w in windows),
        num_calibration_samples=len(windows),
    )
    seconds = time.perf_counter() - start
    import llmcompressor

    print(json.dumps({"seconds": seconds, "llmcompressor": llmcompressor.__version__,
                      "windows": len(windows), "threads": threads}))


if __name__ == "__main__":
    main()
