#!/usr/bin/env python3
"""Golden fixtures for the real LLM / encoder tests, made with Hugging Face `transformers` on CPU.

Writes into crates/models/tests/fixtures/ (small JSON files, committed; the models are not):

  smollm2_logits.json     SmolLM2-135M-Instruct (from the Q4_1 GGUF, dequantized to fp32) on a fixed
                          64-token English input (start of wiki/eval.txt, no BOS): logits of all 64
                          positions at 256 fixed vocab ids (seed-0 RNG, sorted), per-position argmax
                          id/logit, full-vocab sum and max.
  smollm2_tokenizer.json  ~20 varied strings with their token ids (no special tokens added), the
                          tokenizer configuration, and the greedy next token after
                          "The capital of France is" (" Paris").
  smollm2_ppl.json        perplexity per the protocol in shared ASSETS.md: wiki/eval.txt tokenized once
                          (no BOS), the FIRST 8 non-overlapping 2048-token windows, mean NLL over the
                          2047 predicted positions of each window, ppl = exp(mean); with timing and
                          torch's thread count.
  minilm_embeddings.json  all-MiniLM-L6-v2: 16 sentences, their token ids ([CLS] ... [SEP], truncated
                          at 128, no padding), and the 384-d sentence embeddings (mean pooling over
                          the attention mask, then L2 normalisation: the sentence-transformers recipe).

Every file records the versions of the libraries used.

Floats: fp32 values (logits, embeddings) are written as the shortest decimal that round-trips to the
same fp32 (parse as f32 to get the exact value); values computed in fp64 (sums, NLLs) as full doubles.

Tokenizer note. SmolLM2's tokenizer lives only in the GGUF metadata (tokenizer.ggml.pre = "smollm").
transformers (5.x) builds a BPE tokenizer from it but does not know the "smollm" pre-tokenizer and
uses a bare ByteLevel pre-tokenizer. The original SmolLM2 tokenizer.json, and llama.cpp's "smollm"
pre-tokenizer, first split every numeric character (Unicode \\p{N}) on its own:
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)].
For ASCII digits both give the same ids (the vocabulary has no multi-digit or "space+digit" tokens),
but they differ for non-ASCII numerics after a space ("x ½", "²", Arabic-Indic digits, ...), which
occur in the wiki texts. This script uses the REFERENCE tokenizer = transformers' GGUF tokenizer with
the Digits step restored; where transformers' unpatched tokenizer gives other ids, that is recorded
too (fields ending in `_transformers_unpatched`).

Run (CPU only, about 2-3 minutes with 2 threads; needs the assets fetched first):

    scripts/fetch-assets.sh llm
    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch transformers accelerate gguf numpy
    /tmp/torchvenv/bin/python scripts/golden/make_llm_fixtures.py [--assets DIR] [--out DIR]
        [--threads 2] [--only logits,tokenizer,ppl,minilm]

(`accelerate` and `gguf` are needed by transformers to load a GGUF file.) The asset dir defaults to
$GSTICK_ASSETS or <repo>/.cache/assets, as in scripts/fetch-assets.sh.
"""
import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED_VOCAB = 0
N_VOCAB_SAMPLE = 256
LOGITS_LEN = 64
PPL_SEQLEN = 2048
PPL_WINDOWS = 8
MINILM_MAX_LEN = 128

TOKENIZER_STRINGS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "12345",
    "In 1999, the price was $3.14 (about 42%).",
    "Numbers: 0.001, 1e-9, -273.15, 1,000,000",
    " leading space",
    "   three leading spaces and trailing   ",
    "line one\nline two\n\n\tindented with a tab",
    "a\r\nb",
    "    ",
    "Café, naïve, résumé, Zürich, Ångström",
    "ÜNÏCÖDÉ ÀÉÎÕÜ",
    "Emoji: 🙂🚀👍🏽 and ❤️",
    "日本語のテキストと中文",
    "x² + y³ = ½ and ٣٤٥",
    "def add(a, b):\n    return a + b  # sum\n",
    "if (x != 0 && y >= 10) { z = x / y; }",
    "It's, we're, they'll, I'd've, DON'T",
    "URL: https://example.com/path?q=1&r=two#frag",
    "THE END... OR IS IT?!?",
    "<|im_start|>user\nHi<|im_end|>",
    "",
]

MINILM_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "The new movie is awesome!",
    "The cat sits outside",
    "Café naïve résumé: ÀÉÎÕÜ, Zürich and Ångström.",
    "In 1969, Apollo 11 landed on the Moon at 20:17 UTC.",
    "日本語の文と中文句子。",
    "I love it 😍🔥 #blessed",
    "def f(x): return x**2  # square",
    "   Leading and trailing whitespace\t\n",
    "?!",
    # > 128 word pieces: exercises truncation at 128
    " ".join(["The quick brown fox jumps over the lazy dog near the riverbank while the sun sets."] * 9),
]


def versions():
    import tokenizers
    import transformers

    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("gguf", "accelerate", "safetensors"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return v


def f32(x):
    """fp32 value(s) -> Python floats whose shortest repr round-trips to the same fp32."""
    a = np.asarray(x, dtype=np.float32)
    out = [float(str(v)) for v in a.reshape(-1)]
    back = np.asarray(out, dtype=np.float64).astype(np.float32)
    assert np.array_equal(back.view(np.uint32), a.reshape(-1).view(np.uint32)), "fp32 round trip"
    return np.asarray(out, dtype=object).reshape(a.shape).tolist() if a.ndim else out[0]


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({path.stat().st_size} bytes)")


# ------------------------------------------------------------------ SmolLM2
def load_smollm2(assets):
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = assets / "smollm2"
    if not (d / GGUF_NAME).is_file():
        sys.exit(f"missing {d / GGUF_NAME}: run scripts/fetch-assets.sh smollm2")
    hf_tok = AutoTokenizer.from_pretrained(str(d), gguf_file=GGUF_NAME)
    unpatched = hf_tok.backend_tokenizer
    ref = Tokenizer.from_str(unpatched.to_str())
    ref.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=GGUF_NAME, dtype=torch.float32)
    model.eval()
    return hf_tok, unpatched, ref, model


def tokenizer_summary(hf_tok, unpatched, ref):
    j = json.loads(unpatched.to_str())
    m = j["model"]
    return {
        "built_by": "transformers AutoTokenizer.from_pretrained(dir, gguf_file=...) from tokenizer.ggml.* metadata",
        "model": {
            "type": m["type"],
            "vocab_size": len(m["vocab"]),
            "merges": len(m["merges"]),
            **{k: m[k] for k in ("unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                                  "fuse_unk", "byte_fallback", "ignore_merges", "dropout") if k in m},
        },
        "normalizer": j["normalizer"],
        "pre_tokenizer_transformers_unpatched": j["pre_tokenizer"],
        "pre_tokenizer_reference": json.loads(ref.to_str())["pre_tokenizer"],
        "post_processor": j["post_processor"],
        "decoder": j["decoder"],
        "added_tokens": [{"id": t["id"], "content": t["content"], "special": t["special"]} for t in j["added_tokens"]],
        "special_tokens_map": hf_tok.special_tokens_map,
        "add_bos": False,
        "note": "ids below are from the reference pre-tokenizer (Digits(individual) then ByteLevel), as in the "
                "original SmolLM2 tokenizer.json and llama.cpp's 'smollm' pre-tokenizer; transformers' unpatched "
                "GGUF tokenizer lacks the Digits step. Added/special tokens written in the text are matched as "
                "whole tokens (HF default).",
    }


def make_tokenizer(out, vers, hf_tok, unpatched, ref, model):
    summary = tokenizer_summary(hf_tok, unpatched, ref)
    cases = []
    n_diff = 0
    for s in TOKENIZER_STRINGS:
        enc = ref.encode(s, add_special_tokens=False)
        case = {"text": s, "ids": enc.ids, "tokens": enc.tokens,
                "decoded": ref.decode(enc.ids, skip_special_tokens=False)}
        un = unpatched.encode(s, add_special_tokens=False).ids
        if un != enc.ids:
            case["ids_transformers_unpatched"] = un
            n_diff += 1
        cases.append(case)
    # greedy next token
    prompt = "The capital of France is"
    ids = ref.encode(prompt, add_special_tokens=False).ids
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(logits, 5)
    nxt = int(top.indices[0])
    greedy = {
        "prompt": prompt,
        "prompt_ids": ids,
        "next_id": nxt,
        "next_text": ref.decode([nxt]),
        "next_logit": f32(logits[nxt].item()),
        "top5_ids": [int(i) for i in top.indices],
        "top5_logits": f32(top.values.numpy()),
        "top5_text": [ref.decode([int(i)]) for i in top.indices],
    }
    assert greedy["next_text"] == " Paris", greedy
    print(f"greedy after {prompt!r}: {nxt} {greedy['next_text']!r}; {n_diff} string(s) differ unpatched")
    write_json(out / "smollm2_tokenizer.json", {
        "what": "SmolLM2-135M-Instruct tokenizer (from the GGUF metadata) on fixed strings; no special tokens added",
        "source": f"smollm2/{GGUF_NAME}",
        "versions": vers,
        "tokenizer": summary,
        "cases": cases,
        "greedy": greedy,
    })


def make_logits(out, vers, hf_tok, unpatched, ref, model, assets):
    text = (assets / "wiki" / "eval.txt").read_text(encoding="utf-8")[:4000]
    ids = ref.encode(text, add_special_tokens=False).ids[:LOGITS_LEN]
    assert len(ids) == LOGITS_LEN
    assert unpatched.encode(text, add_special_tokens=False).ids[:LOGITS_LEN] == ids
    dec = ref.decode(ids)
    vocab = model.config.vocab_size
    vocab_ids = np.sort(np.random.default_rng(SEED_VOCAB).choice(vocab, size=N_VOCAB_SAMPLE, replace=False))
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()  # (64, vocab)
    assert logits.shape == (LOGITS_LEN, vocab) and np.isfinite(logits).all()
    am = logits.argmax(axis=1)
    write_json(out / "smollm2_logits.json", {
        "what": "SmolLM2-135M-Instruct logits (fp32, GGUF dequantized by transformers) on a fixed 64-token input",
        "source": f"smollm2/{GGUF_NAME}",
        "versions": vers,
        "input": "start of wiki/eval.txt, tokenized (no BOS, no special tokens), first 64 ids; positions 0..63",
        "text": dec,
        "text_reencodes_to_same_ids": ref.encode(dec, add_special_tokens=False).ids == ids,
        "input_ids": ids,
        "vocab_size": vocab,
        "vocab_ids_rule": f"np.sort(np.random.default_rng({SEED_VOCAB}).choice({vocab}, size={N_VOCAB_SAMPLE}, replace=False))",
        "vocab_ids": vocab_ids.tolist(),
        "logits": f32(logits[:, vocab_ids]),  # [position][k] = logit of vocab_ids[k]
        "argmax_id": am.tolist(),
        "argmax_logit": f32(logits[np.arange(LOGITS_LEN), am]),
        "logits_max": f32(logits.max(axis=1)),
        "logits_sum": logits.astype(np.float64).sum(axis=1).tolist(),  # fp64 sum of the fp32 logits
        "logits_sum_note": "sum over the full vocabulary of the fp32 logits, accumulated in fp64",
    })


def make_ppl(out, vers, hf_tok, unpatched, ref, model, assets, threads):
    text = (assets / "wiki" / "eval.txt").read_text(encoding="utf-8")
    t0 = time.perf_counter()
    ids = ref.encode(text, add_special_tokens=False).ids
    t_tok = time.perf_counter() - t0
    un = unpatched.encode(text, add_special_tokens=False).ids
    need = PPL_SEQLEN * PPL_WINDOWS
    assert len(ids) >= need
    per_window, per_window_s = [], []
    total_nll, total_n = 0.0, 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for w in range(PPL_WINDOWS):
            tw = time.perf_counter()
            x = torch.tensor([ids[w * PPL_SEQLEN:(w + 1) * PPL_SEQLEN]])
            logits = model(x).logits[0].float()
            nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none").double()
            per_window.append(nll.mean().item())
            total_nll += nll.sum().item()
            total_n += nll.numel()
            per_window_s.append(time.perf_counter() - tw)
            print(f"  window {w}: nll {per_window[-1]:.5f} ({per_window_s[-1]:.1f}s)", flush=True)
    elapsed = time.perf_counter() - t0
    nll_mean = total_nll / total_n
    ppl = math.exp(nll_mean)
    print(f"ppl {ppl:.4f} (nll {nll_mean:.6f}) over {total_n} predictions in {elapsed:.1f}s, {threads} threads")
    write_json(out / "smollm2_ppl.json", {
        "what": "SmolLM2-135M-Instruct perplexity on wiki/eval.txt per the ASSETS.md protocol, first windows only",
        "source": f"smollm2/{GGUF_NAME}",
        "versions": vers,
        "protocol": "tokenize the whole eval text once (no BOS, reference tokenizer, see smollm2_tokenizer.json), "
                    "non-overlapping windows [0:seqlen], [seqlen:2*seqlen], ... (first `windows` only), each run "
                    "independently from position 0; mean NLL over all predicted positions (seqlen-1 per window); "
                    "ppl = exp(nll_mean). NLL from fp32 logits (log-softmax in fp32), accumulated in fp64.",
        "seqlen": PPL_SEQLEN,
        "windows": PPL_WINDOWS,
        "predicted_positions": total_n,
        "tokens_total": len(ids),
        "tokens_total_transformers_unpatched": len(un),
        "windows_tokens_same_unpatched": un[:need] == ids[:need],
        "first_ids": ids[:16],
        "nll_mean": nll_mean,
        "ppl": ppl,
        "nll_per_window": per_window,
        "timing": {
            "forward_and_loss_s": elapsed,
            "per_window_s": per_window_s,
            "tokens_per_s": need / elapsed,
            "tokenize_eval_s": t_tok,
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "dtype": "float32",
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
        },
    })


# ------------------------------------------------------------------ MiniLM
def make_minilm(out, vers, assets):
    from transformers import AutoModel, AutoTokenizer

    d = assets / "minilm"
    if not (d / "model.safetensors").is_file():
        sys.exit(f"missing {d}/model.safetensors: run scripts/fetch-assets.sh minilm")
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModel.from_pretrained(str(d), dtype=torch.float32).eval()

    def embed(batch):
        with torch.inference_mode():
            h = model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return pooled, torch.nn.functional.normalize(pooled, p=2, dim=1)

    ids, pooled, embs = [], [], []
    for s in MINILM_SENTENCES:  # one at a time: no padding at all
        b = tok(s, padding=False, truncation=True, max_length=MINILM_MAX_LEN, return_tensors="pt")
        p, e = embed(b)
        ids.append(b["input_ids"][0].tolist())
        pooled.append(p[0])
        embs.append(e[0])
    embs = torch.stack(embs)
    # cross-check: one padded batch with the attention mask gives the same embeddings
    bb = tok(MINILM_SENTENCES, padding=True, truncation=True, max_length=MINILM_MAX_LEN, return_tensors="pt")
    _, eb = embed(bb)
    batch_diff = (eb - embs).abs().max().item()
    assert batch_diff < 1e-5, batch_diff
    assert max(len(i) for i in ids) == MINILM_MAX_LEN
    print(f"minilm: lengths {[len(i) for i in ids]}, padded-batch max |diff| {batch_diff:.2e}")
    write_json(out / "minilm_embeddings.json", {
        "what": "all-MiniLM-L6-v2 sentence embeddings (fp32): mean pooling over attention-masked tokens, L2 normalised",
        "source": "minilm/ (model.safetensors, tokenizer.json)",
        "versions": vers,
        "tokenization": f"tokenizer.json (BertNormalizer lowercase, BertPreTokenizer, WordPiece, [CLS] A [SEP]); "
                        f"truncation at {MINILM_MAX_LEN}, no padding; token_type_ids all 0",
        "max_length": MINILM_MAX_LEN,
        "dim": int(embs.shape[1]),
        "sentences": MINILM_SENTENCES,
        "input_ids": ids,
        "pooled_norm": [float(p.double().norm()) for p in pooled],
        "embeddings": f32(embs.numpy()),
        "padded_batch_max_abs_diff": batch_diff,
    })


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--assets", type=Path,
                    default=Path(os.environ.get("GSTICK_ASSETS", ROOT / ".cache" / "assets")))
    ap.add_argument("--out", type=Path, default=ROOT / "crates" / "models" / "tests" / "fixtures")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="logits,tokenizer,ppl,minilm")
    a = ap.parse_args()
    only = set(a.only.split(","))
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vers = versions()
    print("versions:", vers)
    if only & {"logits", "tokenizer", "ppl"}:
        t0 = time.perf_counter()
        hf_tok, unpatched, ref, model = load_smollm2(a.assets)
        print(f"loaded SmolLM2 in {time.perf_counter() - t0:.1f}s")
        if "tokenizer" in only:
            make_tokenizer(a.out, vers, hf_tok, unpatched, ref, model)
        if "logits" in only:
            make_logits(a.out, vers, hf_tok, unpatched, ref, model, a.assets)
        if "ppl" in only:
            make_ppl(a.out, vers, hf_tok, unpatched, ref, model, a.assets, a.threads)
        del model
    if "minilm" in only:
        make_minilm(a.out, vers, a.assets)


if __name__ == "__main__":
    main()
