#!/usr/bin/env python3
"""GPTQ reference for one Linear layer (Frantar et al., 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers"), written to be compared with the Rust
implementation in crates/ptq/src/gptq.rs (test: crates/ptq/tests/gptq_reference.rs).

The algorithm is the paper's (the structure of IST-DASLab/gptq `fasterquant`): columns are
quantized one at a time; the rounding error of column i, divided by the i-th diagonal entry of
the upper Cholesky factor U of H^-1 (H^-1 = U^T U), is spread over the remaining columns with
row i of U. Errors reach the columns of the current block at once and the columns after the
block lazily, once per block.

The integer grid is the one of crates/quant/src/scheme.rs, mirrored exactly:
  int_range(bits, signed=True, narrow): [-2^(b-1) (+1 if narrow), 2^(b-1)-1]
  qparams(min, max): min == max -> scale 1, zero 0;
                     symmetric  -> m = max(|min|, |max|), scale = 2m / (qmax - qmin), zero 0
                     asymmetric -> scale = (max - min) / (qmax - qmin),
                                   zero = round_half_even(qmin - min / scale)
  quantize(x)  = clamp(round_half_even(x / scale + zero), qmin, qmax)
  dequantize(q) = (q - zero) * scale
All arithmetic is float64 (torch.round rounds half to even, like f64::round_ties_even).

Input  (safetensors): weight  f32 [out, in]; hessian f64 [in, in] (H = 2/n sum x x^T).
Output (safetensors): values  int8 [out, in] (original column order),
                      scales  f64 [out, groups], zeros f64 [out, groups] (groups = 1 per channel),
                      perm    int64 [in] (processing order), g_idx int32 [in] (group per column);
                      hessian_trace f64 [1] (to tell the inputs the output was made from);
                      metadata: loss, damp, dead_columns and the options used.

Usage:
  gptq_reference.py IN.safetensors OUT.safetensors --bits 4 --group 64 --sym \
      [--act-order] [--static-groups] [--damp 0.01] [--block 128] [--narrow] \
      [--dynamic-groups updated|block-start] [--f16-scales] [--compare RUST_OUT.safetensors]

--dynamic-groups selects where a group's scale comes from when groups are neither static nor
act-ordered (the group is measured when its first column is reached):
  block-start  the weights as they stood at the start of the current block (IST-DASLab, GPTQModel:
               `find_params(W[:, c:c+g])` reads W, which receives errors only block by block);
  updated      the weights with every error propagated so far (what crates/ptq/src/gptq.rs does).
"""

import argparse
import json
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

torch.set_default_dtype(torch.float64)


# ----------------------------------------------------------------------------- the grid
def int_range(bits: int, narrow: bool) -> tuple[int, int]:
    if not 2 <= bits <= 8:
        raise ValueError(f"{bits} bits is not supported (2 to 8)")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return (lo + 1 if narrow else lo), hi


def qparams(lo: torch.Tensor, hi: torch.Tensor, qrange, symmetric: bool):
    """Scale and zero point per entry of lo/hi (vectors), as scheme.rs `qparams`."""
    qmin, qmax = qrange
    const = hi == lo
    if symmetric:
        m = torch.maximum(lo.abs(), hi.abs())
        lo, hi = -m, m
    scale = (hi - lo) / float(qmax - qmin)
    if symmetric:
        zero = torch.zeros_like(scale)
    else:
        zero = torch.round(float(qmin) - lo / scale)
    scale = torch.where(const, torch.ones_like(scale), scale)
    zero = torch.where(const, torch.zeros_like(zero), zero)
    return scale, zero


def quantize(x, scale, zero, qrange):
    qmin, qmax = qrange
    return torch.clamp(torch.round(x / scale + zero), qmin, qmax)


def dequantize(q, scale, zero):
    return (q - zero) * scale


def range_params(w: torch.Tensor, qrange, symmetric):
    """Parameters of each row of w from its own min and max."""
    return qparams(w.min(dim=1).values, w.max(dim=1).values, qrange, symmetric)


# ----------------------------------------------------------------------------- H^-1 factor
def upper_inverse_factor(h: torch.Tensor, damp: float):
    """U with H^-1 = U^T U, H dampened by damp * mean(diag H); damp x10 while it fails (as
    gptq.rs `upper_inverse_factor`; IST-DASLab raises, llm-compressor falls back to RTN)."""
    n = h.shape[0]
    mean_diag = torch.diagonal(h).mean()
    damp = max(damp, 1e-8)
    eye = torch.eye(n, dtype=h.dtype)
    while damp <= 1.0:
        l, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if info.item() == 0:
            hinv = torch.cholesky_inverse(l)
            u, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if info.item() == 0:
                return u, damp
        damp *= 10.0
    raise RuntimeError(f"the Hessian stays indefinite after dampening up to {damp / 10}")


# ----------------------------------------------------------------------------- GPTQ
def gptq(w, h, bits=4, group=0, symmetric=True, narrow=False, act_order=False,
         static_groups=False, damp=0.01, block=128, dynamic_groups="block-start"):
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise ValueError(f"weight {tuple(w.shape)} and Hessian {tuple(h.shape)} do not match")
    if group and cols % group:
        raise ValueError(f"group size {group} does not divide the {cols} input channels")
    if act_order and group and not static_groups:
        raise ValueError("act-order with groups needs static groups")
    qrange = int_range(bits, narrow)
    w = w.to(torch.float64).clone()
    h = h.to(torch.float64).clone()

    # Dead columns: an input that was always zero; its weights are irrelevant.
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    # Per-channel and static-group parameters come from the weight before any update.
    width = group or cols
    groups = cols // width
    scales = torch.empty(rows, groups)
    zeros = torch.empty(rows, groups)
    for b in range(groups):
        scales[:, b], zeros[:, b] = range_params(w[:, b * width:(b + 1) * width], qrange, symmetric)

    # Processing order: decreasing Hessian diagonal (stable, as Rust's sort_by).
    if act_order:
        perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
    else:
        perm = torch.arange(cols)
    W = w[:, perm].clone()          # receives errors block by block (lazy updates)
    hp = h[perm][:, perm]
    u, damp_used = upper_inverse_factor(hp, damp)

    values = torch.zeros(rows, cols, dtype=torch.int8)
    loss = 0.0
    dynamic = bool(group) and not static_groups
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()    # this block, receiving errors column by column
        err = torch.zeros(rows, i2 - i1)
        for i in range(i1, i2):
            col = int(perm[i])
            if dynamic and col % group == 0:
                if dynamic_groups == "updated":
                    current = torch.cat([W1[:, i - i1:], W[:, i2:]], dim=1)[:, :group]
                else:
                    current = W[:, i:i + group]
                scales[:, col // group], zeros[:, col // group] = range_params(current, qrange, symmetric)
            b = col // width
            s, z = scales[:, b], zeros[:, b]
            x = W1[:, i - i1]
            q = quantize(x, s, z, qrange)
            values[:, col] = q.to(torch.int8)
            d = u[i, i]
            e = (x - dequantize(q, s, z)) / d
            loss += float((e * e).sum() / 2.0)
            err[:, i - i1] = e
            # the rest of this block now
            W1[:, i - i1 + 1:] -= torch.outer(e, u[i, i + 1:i2])
        # the columns after the block, once; summed over the block's columns in order, as the
        # Rust loop does (a matmul would sum in another order and differ in the last bits)
        if i2 < cols:
            acc = torch.zeros(rows, cols - i2)
            for k in range(i2 - i1):
                acc += torch.outer(err[:, k], u[i1 + k, i2:])
            W[:, i2:] -= acc

    g_idx = (torch.arange(cols) // width).to(torch.int32)
    return dict(values=values, scales=scales, zeros=zeros, perm=perm, g_idx=g_idx), dict(
        loss=loss, damp=damp_used, dead_columns=int(dead.sum()))


def dequantize_all(values, scales, zeros, group):
    cols = values.shape[1]
    width = group or cols
    idx = torch.arange(cols) // width
    return (values.to(torch.float64) - zeros[:, idx]) * scales[:, idx]


def round_scales_to_f16(scales):
    return torch.from_numpy(scales.numpy().astype(np.float16).astype(np.float64))


# ----------------------------------------------------------------------------- CLI
def compare(ours, path):
    other = load_file(path)
    v1, v2 = ours["values"].to(torch.int32), other["values"].to(torch.int32)
    diff = (v1 != v2)
    print(json.dumps({
        "compare": path,
        "values_equal": float(1.0 - diff.double().mean()),
        "values_max_abs_diff": int((v1 - v2).abs().max()),
        "scales_max_rel_diff": float(((ours["scales"] - other["scales"].double()).abs()
                                      / ours["scales"].abs().clamp_min(1e-300)).max()),
        "zeros_max_abs_diff": float((ours["zeros"] - other["zeros"].double()).abs().max()),
    }))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group", type=int, default=0, help="input channels per group; 0 = per channel")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="symmetric", action="store_true", default=True)
    sym.add_argument("--asym", dest="symmetric", action="store_false")
    p.add_argument("--narrow", action="store_true", help="narrow integer range (drop qmin)")
    p.add_argument("--act-order", action="store_true",
                   help="columns by decreasing Hessian diagonal (implies static groups)")
    p.add_argument("--static-groups", action="store_true",
                   help="group parameters from the original weight, even without act-order")
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--dynamic-groups", choices=["block-start", "updated"], default="block-start")
    p.add_argument("--f16-scales", action="store_true",
                   help="round the output scales to f16 afterwards (as pipeline.rs does)")
    p.add_argument("--compare", help="a safetensors file with values/scales/zeros to compare with")
    a = p.parse_args(argv)

    t = load_file(a.input)
    w, h = t["weight"], t["hessian"]
    static = a.static_groups or (a.act_order and a.group > 0)
    out, info = gptq(w, h, bits=a.bits, group=a.group, symmetric=a.symmetric, narrow=a.narrow,
                     act_order=a.act_order, static_groups=static, damp=a.damp, block=a.block,
                     dynamic_groups=a.dynamic_groups)
    if a.f16_scales:
        out["scales"] = round_scales_to_f16(out["scales"])
    out["hessian_trace"] = torch.diagonal(h.double()).sum().reshape(1)
    # proxy of the output error: tr((W - Q) H (W - Q)^T) / 2 with the undampened H
    dq = dequantize_all(out["values"], out["scales"], out["zeros"], a.group)
    delta = w.double() - dq
    info["output_error"] = float(torch.einsum("ri,ij,rj->", delta, h.double(), delta) / 2)
    meta = {k: str(v) for k, v in info.items()}
    meta.update(bits=str(a.bits), group=str(a.group), symmetric=str(a.symmetric),
                act_order=str(a.act_order), static_groups=str(static), block=str(a.block),
                dynamic_groups=a.dynamic_groups)
    save_file({k: v.contiguous() for k, v in out.items()}, a.output, metadata=meta)
    print(json.dumps(info))
    if a.compare:
        compare(out, a.compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
