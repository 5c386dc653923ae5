"""Writes crates/models/tests/fixtures/smollm2_config_transformers5.json: the config.json that
transformers 5.x writes for SmolLM2 (RoPE base inside `rope_parameters`, no top-level
`rope_theta`).

    cargo run --release -p gstick -- convert --model .cache/assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/smol_hf
    PY scripts/golden/make_hf_v5_config.py /tmp/smol_hf

PY is a Python with torch and transformers >= 5 (the committed file was made with 5.24.0).
transformers will not save a model it loaded from GGUF, so it loads our Hugging Face export of
the same file and saves that.
"""
import json
import os
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM

src = sys.argv[1]
out = os.path.join(os.path.dirname(__file__), "../../crates/models/tests/fixtures/smollm2_config_transformers5.json")
with tempfile.TemporaryDirectory() as tmp:
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).save_pretrained(tmp)
    config = json.load(open(os.path.join(tmp, "config.json")))
assert "rope_parameters" in config and "rope_theta" not in config, config
with open(out, "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
print(f"wrote {out} with transformers {transformers.__version__}")
