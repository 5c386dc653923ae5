//! Batch-1 decoding of a Llama-family network, one token at a time, without the graph executor.
//!
//! Generating a token is ~120 matrix-vector products of a few microseconds to a millisecond
//! each. Run through the executor, every cell call allocated its output, and every product woke
//! the thread pool from outside (a futex round trip): most of a token's time went to neither
//! arithmetic nor memory traffic. [`Decoder`] reads the same cells' weights once, keeps every
//! buffer from one token to the next, and runs each product on a [`SpinPool`] whose threads wait
//! spinning between steps.
//!
//! - Packed (int8/int4) weights multiply an activation row quantized to int8 per block of 32
//!   ([`q8_dot`], VNNI where present); this is the only numerical difference from the executor,
//!   the same one llama.cpp makes. f32 weights use f32 dot products.
//! - The prompt goes through the executor (the batched prefill path); its KV cache is handed to
//!   the decoder, which appends one row per layer per token.
//! - Rows of each product are split evenly over the threads and each output is computed by one
//!   thread in a fixed order, so results do not depend on the thread count.
//!
//! [`Decoder::new`] accepts exactly the graph `gstick_models::llama::build_llama` makes (deploy
//! Linears allowed); anything else, such as a graph with observers or smoothing inserted, is
//! refused with the reason, and callers fall back to the executor.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use gstick_models::generate::TokenLogits;
use gstick_nn::cell::downcast;
use gstick_nn::cells::{
    Activation, ActivationKind, Add, Embedding, Linear, Mul, RmsNorm, Rope, SelfAttention,
};
use gstick_nn::kernels::spin_pool::SpinPool;
use gstick_nn::kernels::vector_math::{self, MathPath};
use gstick_nn::kernels::with_f32;
use gstick_nn::{Cell, Executor, KvCache, Mode, Network};
use gstick_quant::kernels::q8_dot::{self, Digits, DotIsa, Q8Row};
use gstick_quant::kernels::{Isa, PackedWeight};
use gstick_quant::kv::{self, KvQuant};

use crate::packed_linear::PackedLinear;
use crate::{Error, Result};

/// The weight of one product.
enum Weights {
    F32(Tensor),
    /// With whether its nibbles are centered ([`q8_dot::centered_nibbles`]).
    Packed(Arc<PackedWeight>, bool),
}

/// A Linear's weight and bias as the decoder multiplies them.
struct Matrix {
    weights: Weights,
    bias: Option<Vec<f32>>,
    rows: usize,
    cols: usize,
}

impl Matrix {
    fn from_cell(name: &str, cell: &dyn Cell) -> Result<Matrix> {
        let bias_values = |b: &gstick_nn::Param| -> Result<Vec<f32>> {
            Ok(b.tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        if let Some(l) = downcast::<Linear>(cell) {
            let w = l.weight.tensor();
            if w.dtype() != DType::F32 || w.rank() != 2 {
                return Err(refuse(
                    name,
                    format!("a {:?} weight of rank {}", w.dtype(), w.rank()),
                ));
            }
            let (rows, cols) = w.dims2()?;
            return Ok(Matrix {
                weights: Weights::F32(w.contiguous()?),
                bias: l.bias.as_ref().map(bias_values).transpose()?,
                rows,
                cols,
            });
        }
        if let Some(p) = downcast::<PackedLinear>(cell) {
            return Ok(Matrix {
                weights: Weights::Packed(p.packed.clone(), q8_dot::centered_nibbles(&p.packed)),
                bias: p.bias.as_ref().map(bias_values).transpose()?,
                rows: p.packed.rows,
                cols: p.packed.cols,
            });
        }
        Err(refuse(
            name,
            format!("a {} where a Linear is expected", cell.kind()),
        ))
    }

    /// Whether this product reads the int8-quantized activation row.
    fn wants_q8(&self) -> bool {
        matches!(&self.weights, Weights::Packed(p, _) if q8_dot::supports(p))
    }

    /// Rows `start..start + out.len()` of `W x`, bias included.
    fn rows_into(&self, kernels: &Kernels, x: &[f32], xq: &Q8Row, start: usize, out: &mut [f32]) {
        match &self.weights {
            Weights::F32(t) => {
                // The tensor was made contiguous f32 when the decoder was built.
                let _ = with_f32(t, |w| {
                    vector_math::dot_rows(
                        kernels.math,
                        &w[start * self.cols..(start + out.len()) * self.cols],
                        x,
                        out,
                    )
                });
            }
            Weights::Packed(p, centered) if q8_dot::supports(p) => {
                q8_dot::dot_rows_centered(kernels.dot, p, *centered, xq, start, out)
            }
            Weights::Packed(p, _) => {
                gstick_quant::kernels::rows_into(kernels.row, p, x, start, out)
            }
        }
        if let Some(b) = &self.bias {
            for (y, b) in out.iter_mut().zip(&b[start..]) {
                *y += b;
            }
        }
    }
}

/// The instruction sets in use, and how finely activations are quantized for packed weights.
#[derive(Clone, Copy)]
struct Kernels {
    math: MathPath,
    dot: DotIsa,
    row: Isa,
    digits: Digits,
}

struct Norm {
    weight: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn from_cell(name: &str, cell: &dyn Cell) -> Result<Norm> {
        let n = downcast::<RmsNorm>(cell)
            .ok_or_else(|| refuse(name, format!("a {} where RMSNorm is expected", cell.kind())))?;
        Ok(Norm {
            weight: n
                .weight
                .tensor()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?,
            eps: n.eps as f32,
        })
    }
}

struct Layer {
    attn_norm: Norm,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    mlp_norm: Norm,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
    /// The attention node's qualified name: its key in the KV cache the executor fills.
    cache_key: String,
    /// How the attention's KV cache is quantized (int8 rows), if it is.
    kv_quant: Option<KvQuant>,
}

/// Buffers reused from token to token.
#[derive(Default)]
struct Scratch {
    hidden: Vec<f32>,
    normed: Vec<f32>,
    normed_q8: Q8Row,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    rotated_q: Vec<f32>,
    rotated_k: Vec<f32>,
    attn: Vec<f32>,
    attn_q8: Q8Row,
    /// One score row per thread.
    scores: Vec<Vec<f32>>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act_q8: Q8Row,
    logits: Vec<f32>,
}

/// A batch-1 decoder over a Llama-family network (see the module documentation).
pub struct Decoder {
    /// The network without its head: the prompt runs through it on the executor.
    body: Network,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    head: Matrix,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope: Option<Rope>,
    kernels: Kernels,
    pool: SpinPool,
    cache: KvCache,
    scratch: Scratch,
}

fn refuse(node: &str, what: String) -> Error {
    Error::Layer {
        layer: node.to_string(),
        message: format!("the batch-1 decoder does not run this graph: {what}"),
    }
}

/// The cell of node `name` in `g` after checking its inputs are the nodes named `inputs`.
fn cell_at<'g>(g: &'g Network, prefix: &str, name: &str, inputs: &[&str]) -> Result<&'g dyn Cell> {
    let full = if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    };
    let id = g
        .get(name)
        .ok_or_else(|| refuse(&full, "the node is missing".into()))?;
    let got: Vec<&str> = g
        .inputs_of(id)?
        .iter()
        .map(|&i| g.name_of(i))
        .collect::<std::result::Result<_, _>>()?;
    if got != inputs {
        return Err(refuse(
            &full,
            format!("its inputs are {got:?}, expected {inputs:?}"),
        ));
    }
    let node = g.node(id)?;
    node.cell()
        .map(|c| c.as_ref())
        .ok_or_else(|| refuse(&full, "a sub-graph where a cell is expected".into()))
}

impl Decoder {
    /// Reads the weights of `net` (a graph from `build_llama`, Linears possibly on the deploy
    /// kernels) and starts `threads` decode threads (0: the kernel thread count).
    pub fn new(net: &Network, threads: usize) -> Result<Decoder> {
        let layer_ids: Vec<_> = net
            .node_ids()
            .iter()
            .copied()
            .filter(|&id| {
                net.node(id)
                    .map(|n| n.kind() == "DecoderLayer")
                    .unwrap_or(false)
            })
            .collect();
        let expected_len = layer_ids.len() + 4;
        if net.len() != expected_len
            || net.graph_inputs().len() != 1
            || net.graph_outputs().len() != 1
        {
            return Err(refuse("", format!("{} top-level nodes where {expected_len} (input, embedding, layers, norm, head) are expected", net.len())));
        }
        let embed_cell = cell_at(net, "", "model.embed_tokens", &["input_ids"])?;
        let embed = downcast::<Embedding>(embed_cell)
            .ok_or_else(|| refuse("model.embed_tokens", "not an Embedding".into()))?
            .weight
            .tensor()
            .to_dtype(DType::F32)?
            .contiguous()?;
        let (_, hidden) = embed.dims2()?;
        let mut layers = Vec::with_capacity(layer_ids.len());
        let mut previous = "model.embed_tokens".to_string();
        let mut attention: Option<(usize, usize, usize, Option<Rope>)> = None;
        for (i, &id) in layer_ids.iter().enumerate() {
            let name = format!("model.layers.{i}");
            if net.name_of(id)? != name {
                return Err(refuse(
                    net.name_of(id)?,
                    format!("decoder layer {i} is not named {name}"),
                ));
            }
            let inputs: Vec<&str> = net
                .inputs_of(id)?
                .iter()
                .map(|&i| net.name_of(i))
                .collect::<std::result::Result<_, _>>()?;
            if inputs != [previous.as_str()] {
                return Err(refuse(
                    &name,
                    format!("its input is {inputs:?}, expected {previous}"),
                ));
            }
            let g = net.subgraph(id)?;
            let (layer, attn) = read_layer(g, &name)?;
            match &attention {
                None => attention = Some(attn),
                Some(a) if *a == attn => {}
                Some(_) => {
                    return Err(refuse(
                        &name,
                        "attention shapes differ between layers".into(),
                    ))
                }
            }
            layers.push(layer);
            previous = name;
        }
        let (heads, kv_heads, head_dim, rope) =
            attention.ok_or_else(|| refuse("", "no decoder layers".into()))?;
        let norm = Norm::from_cell(
            "model.norm",
            cell_at(net, "", "model.norm", &[previous.as_str()])?,
        )?;
        let head = Matrix::from_cell("lm_head", cell_at(net, "", "lm_head", &["model.norm"])?)?;
        let out = net.graph_outputs()[0];
        if net.name_of(out)? != "lm_head" {
            return Err(refuse(
                net.name_of(out)?,
                "the output is not lm_head".into(),
            ));
        }
        for (l, layer) in layers.iter().enumerate() {
            let checks = [
                (&layer.q, heads * head_dim, hidden, "q_proj"),
                (&layer.k, kv_heads * head_dim, hidden, "k_proj"),
                (&layer.v, kv_heads * head_dim, hidden, "v_proj"),
                (&layer.o, hidden, heads * head_dim, "o_proj"),
                (&layer.gate, layer.gate.rows, hidden, "gate_proj"),
                (&layer.up, layer.gate.rows, hidden, "up_proj"),
                (&layer.down, hidden, layer.gate.rows, "down_proj"),
            ];
            for (m, rows, cols, what) in checks {
                if (m.rows, m.cols) != (rows, cols) {
                    return Err(refuse(
                        &format!("model.layers.{l}.{what}"),
                        format!(
                            "a {}x{} weight where {rows}x{cols} is expected",
                            m.rows, m.cols
                        ),
                    ));
                }
            }
        }
        if head.cols != hidden {
            return Err(refuse(
                "lm_head",
                format!("{} input features for hidden size {hidden}", head.cols),
            ));
        }
        let threads = if threads == 0 {
            gstick_nn::kernels::kernel_threads()
        } else {
            threads
        };
        let mut body = net.clone();
        body.set_output(0, net.find("model.norm")?)?;
        body.erase(out)?;
        Ok(Decoder {
            body,
            embed,
            layers,
            norm,
            head,
            heads,
            kv_heads,
            head_dim,
            rope,
            kernels: Kernels {
                math: MathPath::best(),
                dot: DotIsa::detect(),
                row: Isa::detect(),
                digits: Digits::Two,
            },
            pool: SpinPool::new(threads),
            cache: KvCache::new(),
            scratch: Scratch::default(),
        })
    }

    /// How activations meet packed weights: [`Digits::Two`] (the default: 16-bit precision,
    /// within ~1e-4 of the f32-activation result) or [`Digits::One`] (llama.cpp's int8
    /// arithmetic: faster, about 1% perplexity on SmolLM2 W8).
    pub fn with_activation_digits(mut self, digits: Digits) -> Self {
        self.kernels.digits = digits;
        self
    }

    /// Threads that share each product.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The instruction set of the integer dot products (`avx512-vnni`, `avx2`, `portable`).
    pub fn dot_isa(&self) -> &'static str {
        self.kernels.dot.name()
    }

    /// Positions held in the KV cache.
    pub fn positions(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |l| self.cache.positions(&l.cache_key))
    }

    /// Bytes held by the KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Forgets the sequence.
    pub fn reset(&mut self) {
        self.cache.clear();
    }

    /// Runs `ids` through the executor's batched path (the prompt), taking over its KV cache;
    /// the head runs on the last position only.
    fn prefill(&mut self, ids: &[u32]) -> Result<()> {
        let mut exec = Executor::new(Mode::Eval, 0);
        exec.cache = Some(std::mem::take(&mut self.cache));
        let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu)?;
        let result = exec.forward1(&self.body, &input).and_then(|hidden| {
            Ok(hidden
                .squeeze(0)?
                .get(ids.len() - 1)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?)
        });
        self.cache = exec.cache.take().unwrap_or_default();
        self.scratch.normed = result?;
        self.head_logits();
        Ok(())
    }

    /// The logits of the final hidden row held in `scratch.normed`.
    fn head_logits(&mut self) {
        let s = &mut self.scratch;
        products(
            &self.pool,
            self.kernels,
            &s.normed,
            &mut s.normed_q8,
            &mut [(&self.head, &mut s.logits)],
        );
    }

    /// One token through every layer at the next position; leaves the logits in the scratch.
    fn step(&mut self, token: u32) -> Result<()> {
        let vocab = self.embed.dims2()?.0;
        if token as usize >= vocab {
            return Err(Error::Nn(gstick_nn::Error::Config(format!(
                "token {token} is outside the vocabulary of {vocab}"
            ))));
        }
        let position = self.positions();
        let (heads, kv_heads, d) = (self.heads, self.kv_heads, self.head_dim);
        let kv_width = kv_heads * d;
        let s = &mut self.scratch;
        let hidden = self.norm.weight.len();
        s.hidden.resize(hidden, 0.0);
        with_f32(&self.embed, |e| {
            s.hidden
                .copy_from_slice(&e[token as usize * hidden..(token as usize + 1) * hidden])
        })?;
        let tables = self.rope.as_ref().map(|r| r.half_tables(d, position, 1));
        let scale = 1.0 / (d as f32).sqrt();
        let (kernels, pool) = (self.kernels, &self.pool);
        for layer in &self.layers {
            // Attention block.
            rms_norm(kernels.math, &layer.attn_norm, &s.hidden, &mut s.normed);
            products(
                pool,
                kernels,
                &s.normed,
                &mut s.normed_q8,
                &mut [
                    (&layer.q, &mut s.q),
                    (&layer.k, &mut s.k),
                    (&layer.v, &mut s.v),
                ],
            );
            s.rotated_q.resize(s.q.len(), 0.0);
            s.rotated_k.resize(kv_width, 0.0);
            match &tables {
                Some(t) => {
                    gstick_nn::kernels::rows::rotate_heads(
                        &s.q,
                        d,
                        &t.cos,
                        &t.sin,
                        scale,
                        &mut s.rotated_q,
                    );
                    gstick_nn::kernels::rows::rotate_heads(
                        &s.k,
                        d,
                        &t.cos,
                        &t.sin,
                        1.0,
                        &mut s.rotated_k,
                    );
                }
                None => {
                    s.rotated_q
                        .iter_mut()
                        .zip(&s.q)
                        .for_each(|(r, q)| *r = q * scale);
                    s.rotated_k.copy_from_slice(&s.k);
                }
            }
            let rows = self.cache.rows_mut(&layer.cache_key, 1, kv_width)?;
            let cached = &mut rows[0];
            let cache = match &layer.kv_quant {
                None => {
                    cached.keys.extend_from_slice(&s.rotated_k);
                    cached.values.extend_from_slice(&s.v);
                    CacheView::F32 {
                        keys: &cached.keys,
                        values: &cached.values,
                    }
                }
                Some(quant) => {
                    let bad = |what: &str| Error::Layer {
                        layer: layer.cache_key.clone(),
                        message: format!("the new {what} hold NaN or infinity"),
                    };
                    kv::append_rows(
                        quant,
                        true,
                        &s.rotated_k,
                        kv_width,
                        &mut cached.qkeys,
                        &mut cached.key_scales,
                    )
                    .map_err(|_| bad("keys"))?;
                    kv::append_rows(
                        quant,
                        false,
                        &s.v,
                        kv_width,
                        &mut cached.qvalues,
                        &mut cached.value_scales,
                    )
                    .map_err(|_| bad("values"))?;
                    CacheView::Int8 {
                        quant,
                        keys: &cached.qkeys,
                        key_scales: &cached.key_scales,
                        values: &cached.qvalues,
                        value_scales: &cached.value_scales,
                    }
                }
            };
            s.attn.resize(heads * d, 0.0);
            s.scores.resize_with(pool.threads(), Vec::new);
            attend_one(
                pool,
                kernels.math,
                Heads {
                    heads,
                    kv_heads,
                    dim: d,
                },
                &s.rotated_q,
                cache,
                &mut s.scores,
                &mut s.attn,
            );
            products(
                pool,
                kernels,
                &s.attn,
                &mut s.attn_q8,
                &mut [(&layer.o, &mut s.proj)],
            );
            s.hidden.iter_mut().zip(&s.proj).for_each(|(h, p)| *h += p);
            // MLP block.
            rms_norm(kernels.math, &layer.mlp_norm, &s.hidden, &mut s.normed);
            products(
                pool,
                kernels,
                &s.normed,
                &mut s.normed_q8,
                &mut [(&layer.gate, &mut s.gate), (&layer.up, &mut s.up)],
            );
            vector_math::silu_mul(kernels.math, &mut s.gate, &s.up);
            products(
                pool,
                kernels,
                &s.gate,
                &mut s.act_q8,
                &mut [(&layer.down, &mut s.proj)],
            );
            s.hidden.iter_mut().zip(&s.proj).for_each(|(h, p)| *h += p);
        }
        rms_norm(kernels.math, &self.norm, &s.hidden, &mut s.normed);
        self.head_logits();
        Ok(())
    }
}

impl TokenLogits for Decoder {
    /// Several ids (a prompt) run batched through the executor; one id is a decode step.
    fn feed(&mut self, ids: &[u32]) -> gstick_models::Result<&[f32]> {
        let done = match ids {
            [] => Err(Error::Nn(gstick_nn::Error::Config(
                "no tokens to feed".into(),
            ))),
            [one] if self.positions() > 0 => self.step(*one),
            _ => self.prefill(ids),
        };
        done.map_err(|e| gstick_models::Error::Config(e.to_string()))?;
        Ok(&self.scratch.logits)
    }
}

/// The layer's cells, checked against the wiring `build_decoder_layer` makes.
#[allow(clippy::type_complexity)]
fn read_layer(g: &Network, p: &str) -> Result<(Layer, (usize, usize, usize, Option<Rope>))> {
    const NODES: usize = 15;
    if g.len() != NODES {
        return Err(refuse(
            p,
            format!(
                "{} nodes where {NODES} are expected (inserted or removed cells)",
                g.len()
            ),
        ));
    }
    let m = |name: &str, input: &str| -> Result<Matrix> {
        Matrix::from_cell(&format!("{p}.{name}"), cell_at(g, p, name, &[input])?)
    };
    let attn_cell = cell_at(
        g,
        p,
        "self_attn.attention",
        &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    )?;
    let attn = downcast::<SelfAttention>(attn_cell).ok_or_else(|| {
        refuse(
            &format!("{p}.self_attn.attention"),
            "not a SelfAttention".into(),
        )
    })?;
    if !attn.causal {
        return Err(refuse(p, "the attention is not causal".into()));
    }
    let check =
        |name: &str, inputs: &[&str], ok: fn(&dyn Cell) -> bool, what: &str| -> Result<()> {
            let cell = cell_at(g, p, name, inputs)?;
            if ok(cell) {
                Ok(())
            } else {
                Err(refuse(
                    &format!("{p}.{name}"),
                    format!("a {} where {what} is expected", cell.kind()),
                ))
            }
        };
    check(
        "residual_attn",
        &["hidden_states", "self_attn.o_proj"],
        |c| downcast::<Add>(c).is_some(),
        "Add",
    )?;
    check(
        "mlp.act_fn",
        &["mlp.gate_proj"],
        |c| {
            matches!(
                downcast::<Activation>(c),
                Some(Activation(ActivationKind::Silu))
            )
        },
        "SiLU",
    )?;
    check(
        "mlp.gate_up",
        &["mlp.act_fn", "mlp.up_proj"],
        |c| downcast::<Mul>(c).is_some(),
        "Mul",
    )?;
    check(
        "residual_mlp",
        &["residual_attn", "mlp.down_proj"],
        |c| downcast::<Add>(c).is_some(),
        "Add",
    )?;
    let outputs: Vec<&str> = g
        .graph_outputs()
        .iter()
        .map(|&i| g.name_of(i))
        .collect::<std::result::Result<_, _>>()?;
    if outputs != ["residual_mlp"] {
        return Err(refuse(p, format!("its outputs are {outputs:?}")));
    }
    let layer = Layer {
        attn_norm: Norm::from_cell(
            &format!("{p}.input_layernorm"),
            cell_at(g, p, "input_layernorm", &["hidden_states"])?,
        )?,
        q: m("self_attn.q_proj", "input_layernorm")?,
        k: m("self_attn.k_proj", "input_layernorm")?,
        v: m("self_attn.v_proj", "input_layernorm")?,
        o: m("self_attn.o_proj", "self_attn.attention")?,
        mlp_norm: Norm::from_cell(
            &format!("{p}.post_attention_layernorm"),
            cell_at(g, p, "post_attention_layernorm", &["residual_attn"])?,
        )?,
        gate: m("mlp.gate_proj", "post_attention_layernorm")?,
        up: m("mlp.up_proj", "post_attention_layernorm")?,
        down: m("mlp.down_proj", "mlp.gate_up")?,
        cache_key: format!("{p}.self_attn.attention"),
        kv_quant: attn.kv_quant.clone(),
    };
    Ok((
        layer,
        (attn.heads, attn.kv_heads, attn.head_dim, attn.rope.clone()),
    ))
}

fn rms_norm(path: MathPath, n: &Norm, x: &[f32], out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    vector_math::rms_norm_row(path, x, &n.weight, n.eps, out);
}

/// A raw output pointer that threads write disjoint ranges of.
struct Shared(*mut f32);
// SAFETY: each thread writes only its own part (see `products` and `attend_one`).
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `out_i = W_i x` for every (W_i, out_i), the rows of each split evenly over the pool's threads.
/// `x` is quantized into `xq` first when a packed weight reads it that way; each `out_i` is
/// sized to its weight's rows.
fn products(
    pool: &SpinPool,
    kernels: Kernels,
    x: &[f32],
    xq: &mut Q8Row,
    jobs: &mut [(&Matrix, &mut Vec<f32>)],
) {
    if jobs.iter().any(|(m, _)| m.wants_q8()) {
        xq.quantize(x, kernels.digits);
    }
    for (m, out) in jobs.iter_mut() {
        out.resize(m.rows, 0.0);
    }
    let xq: &Q8Row = xq;
    let threads = pool.threads();
    let outs: Vec<(&Matrix, Shared, usize)> = jobs
        .iter_mut()
        .map(|(m, out)| (*m, Shared(out.as_mut_ptr()), out.len()))
        .collect();
    let work = |t: usize| {
        for (m, out, len) in &outs {
            debug_assert_eq!(*len, m.rows);
            // Thread t's rows, in multiples of 4 so row groups stay whole.
            let per = m.rows.div_ceil(threads).next_multiple_of(4);
            let start = (t * per).min(m.rows);
            let end = ((t + 1) * per).min(m.rows);
            if start < end {
                // SAFETY: [start, end) is this thread's alone and lies within the buffer.
                let rows =
                    unsafe { std::slice::from_raw_parts_mut(out.get().add(start), end - start) };
                m.rows_into(&kernels, x, xq, start, rows);
            }
        }
    };
    pool.run(&work);
}

/// The head layout of the decoder's attention.
#[derive(Clone, Copy)]
struct Heads {
    heads: usize,
    kv_heads: usize,
    dim: usize,
}

/// The cached keys and values one decode step reads.
#[derive(Clone, Copy)]
enum CacheView<'a> {
    F32 {
        keys: &'a [f32],
        values: &'a [f32],
    },
    Int8 {
        quant: &'a KvQuant,
        keys: &'a [i8],
        key_scales: &'a [f32],
        values: &'a [i8],
        value_scales: &'a [f32],
    },
}

impl CacheView<'_> {
    fn len(&self) -> usize {
        match self {
            CacheView::F32 { keys, .. } => keys.len(),
            CacheView::Int8 { keys, .. } => keys.len(),
        }
    }
}

/// softmax(q k^T) v for one query row against every cached position, query heads split over the
/// pool's threads (each with its own score row in `scores`).
fn attend_one(
    pool: &SpinPool,
    path: MathPath,
    h: Heads,
    q: &[f32],
    cache: CacheView,
    scores: &mut [Vec<f32>],
    out: &mut [f32],
) {
    let kv_width = h.kv_heads * h.dim;
    let positions = cache.len() / kv_width;
    let group = h.heads / h.kv_heads;
    let threads = pool.threads();
    let rows: Vec<Shared> = scores
        .iter_mut()
        .map(|s| {
            s.resize(positions, 0.0);
            Shared(s.as_mut_ptr())
        })
        .collect();
    let out_ptr = Shared(out.as_mut_ptr());
    let work = |t: usize| {
        // SAFETY: thread t alone uses score row t and writes heads t, t + threads, ...
        let scores = unsafe { std::slice::from_raw_parts_mut(rows[t].get(), positions) };
        for head in (t..h.heads).step_by(threads) {
            let kv = head / group;
            let qh = &q[head * h.dim..(head + 1) * h.dim];
            match cache {
                CacheView::F32 { keys, .. } => {
                    vector_math::dot_strided(path, &keys[kv * h.dim..], kv_width, qh, scores)
                }
                CacheView::Int8 {
                    quant,
                    keys,
                    key_scales,
                    ..
                } => kv::key_scores(quant, keys, key_scales, kv_width, kv * h.dim, qh, scores),
            }
            let max = vector_math::max(path, scores);
            let sum = vector_math::exp_shifted_sum(path, scores, max);
            vector_math::scale(path, scores, 1.0 / sum);
            let o =
                unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(head * h.dim), h.dim) };
            match cache {
                CacheView::F32 { values, .. } => {
                    vector_math::weighted_rows(path, &values[kv * h.dim..], kv_width, scores, o)
                }
                CacheView::Int8 {
                    quant,
                    values,
                    value_scales,
                    ..
                } => kv::weighted_values(
                    quant,
                    values,
                    value_scales,
                    kv_width,
                    kv * h.dim,
                    scores,
                    o,
                ),
            }
        }
    };
    pool.run(&work);
}
