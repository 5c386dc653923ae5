//! Convert (spec §3.12 "Convert", done through to real integers): a fake-quantized training
//! network becomes an int8 deploy network. Activation fake quantizers become `Quantize` (or
//! `Requantize` when the value is already an integer); quantized convs and Linears become integer
//! cells with BatchNorm folded into their per-channel scales and biases; ReLU and max-pooling run
//! on the integers; anything else reads dequantized values. A second pass fuses each integer
//! layer with the ReLU and quantizer after it, so it requantizes its int32 sums directly.

use std::collections::HashMap;

use candle_core::Tensor;
use gstick_nn::cell::downcast;
use gstick_nn::cells::{Activation, ActivationKind, Pool2d, PoolKind};
use gstick_nn::{Cell, Network};
use gstick_quant::int8::{ActQuant, Int8Rows};
use gstick_rewrite::{Arg, Graph, Match, NewNode, NodeId, Op, Pattern, PatternEngine};

use super::cells::{FakeQuant, QuantConv2d, QuantConvBn, QuantLinear};
use super::fake_quant::{FakeQuantizer, Nudged};
use gstick_deploy::int8_cells::{
    BnAffine, Dequantize, Int8Add, Int8Conv2d, Int8Linear, Int8MaxPool, Int8Out, Int8Relu,
    Int8Weights, Quantize, Requantize,
};

/// How a value travels in the deploy network.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Float,
    Int8(ActQuant),
}

/// The integer that stands for 0 when values are counted from the range's bottom
/// (u = (x - min) / scale): the nudged zero point minus the grid's lowest integer, which differs
/// from the zero point itself on a narrow grid.
fn zero_offset(n: &Nudged) -> f32 {
    (-n.min / n.scale).round()
}

fn act_quant(n: &Nudged) -> ActQuant {
    ActQuant {
        scale: n.scale,
        zero_point: zero_offset(n).clamp(0.0, 255.0) as u8,
        min: n.min,
        max: n.max,
    }
}

fn layer_error(g: &Network, id: NodeId, message: impl Into<String>) -> crate::Error {
    crate::Error::Layer {
        layer: g.name_of(id).unwrap_or("?").to_string(),
        message: message.into(),
    }
}

/// Integers of a weight under its fake quantizer's per-channel ranges, exactly the grid points
/// the fake-quantized weight takes (stored minus 128, with the zero point shifted alike).
fn int_weights(
    w: &Tensor,
    quantizer: &FakeQuantizer,
    bias: Vec<f32>,
) -> gstick_nn::Result<Int8Weights> {
    let out = w.dims()[0];
    let values: Vec<f32> = w.flatten_all()?.to_vec1()?;
    let cols = values.len() / out.max(1);
    let ranges = quantizer.nudged()?;
    let mut ints = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(out);
    let mut zero_points = Vec::with_capacity(out);
    for o in 0..out {
        let n = ranges[if ranges.len() == 1 { 0 } else { o }];
        let (_, qmax) = quantizer.config.grid();
        if qmax > 255.0 {
            return Err(gstick_nn::Error::Config(format!(
                "{}-bit weights do not fit int8",
                quantizer.config.bits
            )));
        }
        for &v in &values[o * cols..(o + 1) * cols] {
            let c = v.clamp(n.min, n.max);
            let u = ((c - n.min) / n.scale + 0.5).floor().clamp(0.0, 255.0);
            ints.push((u as i32 - 128) as i8);
        }
        zero_points.push(zero_offset(&n) as i32 - 128);
        scales.push(n.scale);
    }
    Ok(Int8Weights {
        rows: Int8Rows::new(&ints, out, cols),
        scales,
        zero_points,
        bias,
        batch_norm: None,
    })
}

fn bias_values(b: Option<&Tensor>, out: usize) -> gstick_nn::Result<Vec<f32>> {
    Ok(match b {
        Some(b) => b.to_vec1()?,
        None => vec![0.0; out],
    })
}

/// The float conv that replaces a quantized one whose input is not quantized: the weight is the
/// fake-quantized one, so the output is what the training network computed.
fn float_conv(
    conv: &gstick_nn::cells::Conv2d,
    w: &Tensor,
    bias: Vec<f32>,
) -> gstick_nn::Result<Box<dyn Cell>> {
    let out = w.dims()[0];
    let b = Tensor::from_vec(bias, out, w.device())?;
    Ok(Box::new(gstick_nn::cells::Conv2d::from_tensors(
        w.detach(),
        Some(b),
        conv.config,
    )?))
}

struct Converter {
    nested: bool,
    forms: HashMap<NodeId, Form>,
    /// A dequantized copy of an integer value, shared by its float readers.
    dequantized: HashMap<NodeId, NodeId>,
}

impl Converter {
    fn form(&self, id: NodeId) -> Form {
        self.forms.get(&id).copied().unwrap_or(Form::Float)
    }

    /// Makes argument `index` of `node` read a float version of its value.
    fn float_input(&mut self, g: &mut Network, node: NodeId, index: usize) -> crate::Result<()> {
        let src = g.node(node)?.inputs()[index];
        let Form::Int8(q) = self.form(src) else {
            return Ok(());
        };
        let dq = match self.dequantized.get(&src) {
            Some(&d) => d,
            None => {
                let name = g.unique_name(&format!("{}_dequant", g.name_of(src)?));
                let d = g.insert(
                    g.after(src),
                    &name,
                    Op::Cell(Box::new(Dequantize { quant: q }) as Box<dyn Cell>),
                    &[src],
                )?;
                self.dequantized.insert(src, d);
                d
            }
        };
        g.set_input(node, index, dq)?;
        Ok(())
    }

    fn replace(
        &mut self,
        g: &mut Network,
        id: NodeId,
        cell: Box<dyn Cell>,
    ) -> crate::Result<NodeId> {
        let node = g.node(id)?;
        let name = node.name().to_string();
        let inputs = node.inputs().iter().copied().map(Arg::Node).collect();
        Ok(g.replace(id, vec![NewNode::cell(name, cell, inputs)])?[0])
    }

    fn graph(&mut self, g: &mut Network, input_forms: &[Form]) -> crate::Result<Vec<Form>> {
        for (&id, &f) in g.graph_inputs().to_vec().iter().zip(input_forms) {
            self.forms.insert(id, f);
        }
        for id in g.node_ids().to_vec() {
            let node = g.node(id)?;
            if let Op::SubGraph { .. } = node.op() {
                let forms: Vec<Form> = node.inputs().iter().map(|&i| self.form(i)).collect();
                let mut inner = Converter {
                    nested: true,
                    forms: HashMap::new(),
                    dequantized: HashMap::new(),
                };
                let outs = inner.graph(g.subgraph_mut(id)?, &forms)?;
                self.forms
                    .insert(id, outs.first().copied().unwrap_or(Form::Float));
                continue;
            }
            let Some(cell) = node.cell() else { continue };
            let inputs: Vec<Form> = node.inputs().iter().map(|&i| self.form(i)).collect();
            let first = inputs.first().copied().unwrap_or(Form::Float);
            let cell = cell.as_ref();
            if let Some(fq) = downcast::<FakeQuant>(cell) {
                let q = act_quant(&fq.quantizer.nudged()?[0]);
                let new: Box<dyn Cell> = match first {
                    Form::Float => Box::new(Quantize { quant: q }),
                    Form::Int8(p) => Box::new(Requantize::new(p, q, false)),
                };
                let nid = self.replace(g, id, new)?;
                self.forms.insert(nid, Form::Int8(q));
            } else if let Some(c) = downcast::<QuantConv2d>(cell) {
                let w = c.conv.weight.tensor().clone();
                let bias = bias_values(c.conv.bias.as_ref().map(|b| b.tensor()), w.dims()[0])?;
                let conv = c.conv.clone();
                let weights = int_weights(&w, &c.weight_quant, bias)
                    .map_err(|e| layer_error(g, id, e.to_string()))?;
                self.conv(g, id, &conv, weights, first)?;
            } else if let Some(c) = downcast::<QuantConvBn>(cell) {
                let (w, bias, bn) = c.eval_parts()?;
                let conv = c.conv.clone();
                let mut weights = int_weights(&w, &c.weight_quant, bias.to_vec1()?)
                    .map_err(|e| layer_error(g, id, e.to_string()))?;
                if let Some([mean, denom, gamma, beta]) = bn {
                    weights.batch_norm = Some(BnAffine {
                        mean: mean.to_vec1()?,
                        denom: denom.to_vec1()?,
                        gamma: gamma.to_vec1()?,
                        beta: beta.to_vec1()?,
                    });
                }
                self.conv(g, id, &conv, weights, first)?;
            } else if let Some(l) = downcast::<QuantLinear>(cell) {
                let w = l.linear.weight.tensor().clone();
                let bias = bias_values(l.linear.bias.as_ref().map(|b| b.tensor()), w.dims()[0])?;
                let weights = int_weights(&w, &l.weight_quant, bias)
                    .map_err(|e| layer_error(g, id, e.to_string()))?;
                match first {
                    Form::Int8(q) => {
                        let cell = Int8Linear {
                            weights,
                            input: q,
                            out: Int8Out::Float,
                        };
                        self.replace(g, id, Box::new(cell))?;
                    }
                    Form::Float => {
                        let w = dequantized_weight(&weights)?;
                        let b = Tensor::new(weights.bias.as_slice(), w.device())?;
                        let lin = gstick_nn::cells::Linear::from_tensors(w, Some(b))?;
                        self.replace(g, id, Box::new(lin))?;
                    }
                }
            } else if matches!(
                downcast::<Activation>(cell).map(|a| &a.0),
                Some(ActivationKind::Relu)
            ) && matches!(first, Form::Int8(_))
            {
                let Form::Int8(q) = first else { unreachable!() };
                let nid = self.replace(
                    g,
                    id,
                    Box::new(Int8Relu {
                        zero_point: q.zero_point,
                    }),
                )?;
                self.forms.insert(nid, Form::Int8(q));
            } else if let (Some(p), Form::Int8(q)) = (downcast::<Pool2d>(cell), first) {
                if p.kind == PoolKind::Max {
                    let pool = Int8MaxPool {
                        kernel: p.kernel,
                        stride: p.stride,
                        padding: p.padding,
                    };
                    let nid = self.replace(g, id, Box::new(pool))?;
                    self.forms.insert(nid, Form::Int8(q));
                } else {
                    self.float_input(g, id, 0)?;
                }
            } else if cell.kind() == "Flatten" {
                // A reshape: the integers and their parameters pass through.
                self.forms.insert(id, first);
            } else if cell.kind() == "Add" && inputs.len() == 2 {
                match (inputs[0], inputs[1]) {
                    (Form::Int8(a), Form::Int8(b)) => {
                        let cell = Int8Add::new(a, b, Int8Out::Float);
                        self.replace(g, id, Box::new(cell))?;
                    }
                    _ => {
                        self.float_input(g, id, 0)?;
                        self.float_input(g, id, 1)?;
                    }
                }
            } else {
                for i in 0..inputs.len() {
                    self.float_input(g, id, i)?;
                }
            }
        }
        // Sub-graphs hand integers to their parent; the network's outputs leave as floats.
        let outputs = g.graph_outputs().to_vec();
        let mut forms = Vec::new();
        for (i, &o) in outputs.iter().enumerate() {
            match self.form(o) {
                Form::Int8(q) if !self.nested => {
                    let name = g.unique_name(&format!("{}_dequant", g.name_of(o)?));
                    let d = g.insert(
                        g.after(o),
                        &name,
                        Op::Cell(Box::new(Dequantize { quant: q }) as Box<dyn Cell>),
                        &[o],
                    )?;
                    g.set_output(i, d)?;
                    forms.push(Form::Float);
                }
                f => forms.push(f),
            }
        }
        Ok(forms)
    }

    fn conv(
        &mut self,
        g: &mut Network,
        id: NodeId,
        conv: &gstick_nn::cells::Conv2d,
        weights: Int8Weights,
        input: Form,
    ) -> crate::Result<()> {
        let dims = conv.weight.tensor().dims().to_vec();
        let c = conv.config;
        match input {
            Form::Int8(q) if c.groups == 1 => {
                let cell = Int8Conv2d {
                    weights,
                    input: q,
                    out: Int8Out::Float,
                    kernel: (dims[2], dims[3]),
                    stride: c.stride,
                    padding: c.padding,
                    dilation: c.dilation,
                    taps: Default::default(),
                    quad_taps: Default::default(),
                };
                self.replace(g, id, Box::new(cell))?;
            }
            _ => {
                // Grouped convolutions (and float inputs) stay float, with the quantized weight.
                self.float_input(g, id, 0)?;
                let mut w = dequantized_weight(&weights)?;
                let mut bias = weights.bias.clone();
                if let Some(bn) = &weights.batch_norm {
                    // Fold the kept BatchNorm: w * g / d and (b - mean) * g / d + beta.
                    let factor: Vec<f32> =
                        bn.gamma.iter().zip(&bn.denom).map(|(g, d)| g / d).collect();
                    let f = Tensor::new(factor.as_slice(), w.device())?.unsqueeze(1)?;
                    w = w.broadcast_mul(&f)?;
                    for (o, b) in bias.iter_mut().enumerate() {
                        *b = (*b - bn.mean[o]) * factor[o] + bn.beta[o];
                    }
                }
                let cell = float_conv(conv, &w.reshape(dims)?, bias)?;
                self.replace(g, id, cell)?;
            }
        }
        Ok(())
    }
}

/// The float weight the integers stand for, (out, cols).
fn dequantized_weight(w: &Int8Weights) -> gstick_nn::Result<Tensor> {
    let (rows, cols, kp) = (w.rows.rows, w.rows.cols, w.rows.k_padded);
    let mut v = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let z = w.zero_points[r];
        v.extend(
            w.rows.data[r * kp..r * kp + cols]
                .iter()
                .map(|&q| (q as i32 - z) as f32 * w.scales[r]),
        );
    }
    Ok(Tensor::from_vec(
        v,
        (rows, cols),
        &candle_core::Device::Cpu,
    )?)
}

/// Fuses an integer layer (conv, Linear or Add) producing floats with the ReLU and `Quantize`
/// after it: the layer then requantizes its sums itself.
fn fuse_requantization(net: &mut Network) -> crate::Result<()> {
    // An integer ReLU feeding a Requantize becomes the Requantize's input floor: one pass over
    // the values instead of two, the same integers.
    fuse_pairs(
        net,
        ["Int8ReLU", "Requantize"],
        |relu: &Int8Relu, req: &Requantize| {
            req.floor.is_none().then(|| {
                Box::new(Requantize::with_floor(
                    req.from,
                    req.to,
                    req.relu,
                    Some(relu.zero_point),
                )) as Box<dyn Cell>
            })
        },
    )?;
    fuse_layers_and_quantizers(net)?;
    // A quantized residual sum feeding a Requantize: one composed table lookup.
    fuse_pairs(
        net,
        ["Int8Add", "Requantize"],
        |add: &Int8Add, req: &Requantize| {
            add.then_requantize(req.clone())
                .map(|fused| Box::new(fused) as Box<dyn Cell>)
        },
    )
}

/// Replaces each chain of two cells of `kinds` (the first used only by the second) that
/// `combine` merges by the merged cell, named as the second and fed the first's inputs.
fn fuse_pairs<A: 'static, B: 'static>(
    net: &mut Network,
    kinds: [&'static str; 2],
    combine: impl Fn(&A, &B) -> Option<Box<dyn Cell>> + 'static,
) -> crate::Result<()> {
    let engine = PatternEngine::new(
        Pattern::chain(&kinds),
        move |g: &Graph<Box<dyn Cell>>, m: &Match| {
            let cell_of = |id| g.node(id).ok().and_then(|n| n.cell()).map(|c| c.as_ref());
            let (first, second) = (m.get(kinds[0])?, m.get(kinds[1])?);
            let a = cell_of(first).and_then(|c| downcast::<A>(c));
            let b = cell_of(second).and_then(|c| downcast::<B>(c));
            let Some(cell) = a.zip(b).and_then(|(a, b)| combine(a, b)) else {
                return Ok(Vec::new());
            };
            Ok(vec![NewNode::cell(
                g.name_of(second)?.to_string(),
                cell,
                g.inputs_of(first)?.iter().copied().map(Arg::Node).collect(),
            )])
        },
    );
    engine.apply(net)?;
    Ok(())
}

/// A layer (or residual Add) followed by its output quantizer, with or without a ReLU between,
/// becomes the layer with a quantized output.
fn fuse_layers_and_quantizers(net: &mut Network) -> crate::Result<()> {
    for layer in ["Int8Conv2d", "Int8Linear", "Int8Add"] {
        for with_relu in [true, false] {
            let kinds: Vec<&str> = if with_relu {
                vec![layer, "ReLU", "Quantize"]
            } else {
                vec![layer, "Quantize"]
            };
            let engine = PatternEngine::new(
                Pattern::chain(&kinds),
                move |g: &Graph<Box<dyn Cell>>, m: &Match| fuse(g, m, layer, with_relu),
            );
            engine.apply(net)?;
        }
    }
    Ok(())
}

fn fuse(
    g: &Graph<Box<dyn Cell>>,
    m: &Match,
    layer: &str,
    relu: bool,
) -> gstick_rewrite::Result<Vec<NewNode<Box<dyn Cell>>>> {
    let (layer_id, quant_id) = (m.get(layer)?, m.get("Quantize")?);
    let cell_of = |id| g.node(id).ok().and_then(|n| n.cell()).map(|c| c.as_ref());
    let Some(quant) = cell_of(quant_id).and_then(|c| downcast::<Quantize>(c)) else {
        return Ok(Vec::new());
    };
    if relu {
        let relu_id = m.get("ReLU")?;
        let is_relu = cell_of(relu_id)
            .and_then(|c| downcast::<Activation>(c))
            .is_some_and(|a| a.0 == ActivationKind::Relu);
        if !is_relu {
            return Ok(Vec::new());
        }
    }
    let out = Int8Out::Quantized {
        quant: quant.quant,
        relu,
    };
    let Some(cell) = cell_of(layer_id) else {
        return Ok(Vec::new());
    };
    let fused: Box<dyn Cell> = if let Some(c) = downcast::<Int8Conv2d>(cell) {
        if c.out != Int8Out::Float {
            return Ok(Vec::new());
        }
        Box::new(Int8Conv2d { out, ..c.clone() })
    } else if let Some(c) = downcast::<Int8Linear>(cell) {
        if c.out != Int8Out::Float {
            return Ok(Vec::new());
        }
        Box::new(Int8Linear { out, ..c.clone() })
    } else if let Some(c) = downcast::<Int8Add>(cell) {
        if c.out != Int8Out::Float {
            return Ok(Vec::new());
        }
        Box::new(Int8Add::new(c.a, c.b, out))
    } else {
        return Ok(Vec::new());
    };
    let node = g.node(layer_id)?;
    Ok(vec![NewNode::cell(
        g.name_of(quant_id)?,
        fused,
        node.inputs().iter().copied().map(Arg::Node).collect(),
    )])
}

/// Rewrites a fake-quantized network (SimQAT's training form, or PTQ-calibrated) into an int8
/// deploy network; all or nothing.
pub fn convert_to_int8(net: &mut Network) -> crate::Result<()> {
    net.transaction(|g| {
        let inputs = vec![Form::Float; g.graph_inputs().len()];
        let mut c = Converter {
            nested: false,
            forms: HashMap::new(),
            dequantized: HashMap::new(),
        };
        c.graph(g, &inputs)?;
        fuse_requantization(g)
    })
}
