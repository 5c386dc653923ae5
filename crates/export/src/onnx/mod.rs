//! Export of an int8 deploy CNN (what `qat::convert_to_int8` makes) to ONNX in QDQ form, opset 19:
//! activations as QuantizeLinear / DequantizeLinear pairs with the network's (scale, zero point),
//! weights as int8 initializers behind a per-channel DequantizeLinear, so runtimes such as ONNX
//! Runtime can fuse them into integer kernels. Sub-graphs (ResNet blocks) are inlined.

pub mod proto;

use std::collections::HashMap;
use std::path::Path;

use gstick_nn::cell::downcast;
use gstick_nn::cells::{Activation, ActivationKind, Conv2d, Flatten, Linear};
use gstick_nn::{Cell, Network};
use gstick_quant::int8::ActQuant;
use gstick_rewrite::Op;
use prost::Message;

use gstick_deploy::int8_cells::{
    Dequantize, Int8Add, Int8Conv2d, Int8Linear, Int8MaxPool, Int8Out, Int8Relu, Int8Weights,
    Quantize, Requantize,
};
use proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The opset the exported models declare.
pub const OPSET: i64 = 19;
const IR_VERSION: i64 = 9;

fn export_error(path: &Path, message: impl Into<String>) -> crate::Error {
    crate::Error::Export {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn tensor_value(
    name: &str,
    elem: DataType,
    dims: Vec<tensor_shape_proto::Dimension>,
) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn dim_value(v: i64) -> tensor_shape_proto::Dimension {
    tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimValue(v)),
        ..Default::default()
    }
}

fn dim_param(p: &str) -> tensor_shape_proto::Dimension {
    tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimParam(p.into())),
        ..Default::default()
    }
}

/// Accumulates nodes and initializers with unique value names.
#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    used: HashMap<String, usize>,
}

impl Builder {
    fn fresh(&mut self, base: &str) -> String {
        let n = self.used.entry(base.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base.to_string()
        } else {
            format!("{base}_{}", *n - 1)
        }
    }

    fn init(&mut self, base: &str, ty: DataType, dims: &[i64], raw: Vec<u8>) -> String {
        let name = self.fresh(base);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            data_type: Some(ty as i32),
            dims: dims.to_vec(),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    fn f32s(&mut self, base: &str, dims: &[i64], v: &[f32]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(base, DataType::Float, dims, raw)
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(name);
        self.nodes.push(NodeProto {
            op_type: Some(op.into()),
            name: Some(out.clone()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// Scale and zero-point initializers of an activation.
    fn qparams(&mut self, name: &str, q: &ActQuant) -> (String, String) {
        let s = self.f32s(&format!("{name}.scale"), &[], &[q.scale]);
        let z = self.init(
            &format!("{name}.zero_point"),
            DataType::Uint8,
            &[],
            vec![q.zero_point],
        );
        (s, z)
    }

    fn quantize(&mut self, name: &str, x: &str, q: &ActQuant) -> String {
        let (s, z) = self.qparams(name, q);
        self.node("QuantizeLinear", name, &[x, &s, &z], vec![])
    }

    fn dequantize(&mut self, name: &str, x: &str, q: &ActQuant) -> String {
        let (s, z) = self.qparams(name, q);
        self.node(
            "DequantizeLinear",
            &format!("{name}.dq"),
            &[x, &s, &z],
            vec![],
        )
    }

    /// A `Requantize` cell: the integer floor (a folded ReLU) as Max, then dequantize, ReLU
    /// when asked, quantize to the new parameters.
    fn requantize(&mut self, name: &str, x: &str, r: &Requantize) -> String {
        let floored;
        let x = match r.floor {
            Some(f) => {
                let z = self.init(&format!("{name}.floor"), DataType::Uint8, &[], vec![f]);
                floored = self.node("Max", &format!("{name}.floor_max"), &[x, &z], vec![]);
                floored.as_str()
            }
            None => x,
        };
        let f = self.dequantize(name, x, &r.from);
        let f = if r.relu {
            self.node("Relu", &format!("{name}.relu"), &[&f], vec![])
        } else {
            f
        };
        self.quantize(name, &f, &r.to)
    }

    /// The int8 weight behind a per-output-channel DequantizeLinear, with `shape`.
    fn weight(&mut self, name: &str, w: &Int8Weights, shape: &[i64]) -> String {
        let (rows, cols, kp) = (w.rows.rows, w.rows.cols, w.rows.k_padded);
        let mut raw = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            raw.extend(w.rows.data[r * kp..r * kp + cols].iter().map(|&q| q as u8));
        }
        let q = self.init(&format!("{name}.weight_int8"), DataType::Int8, shape, raw);
        let s = self.f32s(&format!("{name}.weight_scale"), &[rows as i64], &w.scales);
        let zp: Vec<u8> = w.zero_points.iter().map(|&z| z as i8 as u8).collect();
        let z = self.init(
            &format!("{name}.weight_zero_point"),
            DataType::Int8,
            &[rows as i64],
            zp,
        );
        self.node(
            "DequantizeLinear",
            &format!("{name}.weight"),
            &[&q, &s, &z],
            vec![int("axis", 0)],
        )
    }

    /// The kept BatchNorm (unfolded SimQAT), in the deploy cell's order: (y - mean) / denom *
    /// gamma + beta with [C, 1, 1] constants.
    fn batch_norm(&mut self, name: &str, y: &str, w: &Int8Weights) -> String {
        let Some(bn) = &w.batch_norm else {
            return y.to_string();
        };
        let c = bn.mean.len() as i64;
        let mean = self.f32s(&format!("{name}.bn_mean"), &[c, 1, 1], &bn.mean);
        let denom = self.f32s(&format!("{name}.bn_denom"), &[c, 1, 1], &bn.denom);
        let gamma = self.f32s(&format!("{name}.bn_gamma"), &[c, 1, 1], &bn.gamma);
        let beta = self.f32s(&format!("{name}.bn_beta"), &[c, 1, 1], &bn.beta);
        let a = self.node("Sub", &format!("{name}.bn_sub"), &[y, &mean], vec![]);
        let b = self.node("Div", &format!("{name}.bn_div"), &[&a, &denom], vec![]);
        let c = self.node("Mul", &format!("{name}.bn_mul"), &[&b, &gamma], vec![]);
        self.node("Add", &format!("{name}.bn_add"), &[&c, &beta], vec![])
    }

    /// ReLU and requantization after an integer layer, as its `Int8Out` says.
    fn finish(&mut self, name: &str, y: &str, out: &Int8Out) -> String {
        match out {
            Int8Out::Float => y.to_string(),
            Int8Out::Quantized { quant, relu } => {
                let r = if *relu {
                    self.node("Relu", &format!("{name}.relu"), &[y], vec![])
                } else {
                    y.to_string()
                };
                self.quantize(name, &r, quant)
            }
        }
    }

    fn graph(
        &mut self,
        g: &Network,
        prefix: &str,
        inputs: &[String],
    ) -> crate::Result<Vec<String>> {
        let mut values: HashMap<gstick_rewrite::NodeId, String> = HashMap::new();
        for (&id, v) in g.graph_inputs().iter().zip(inputs) {
            values.insert(id, v.clone());
        }
        for &id in g.node_ids() {
            let node = g.node(id)?;
            let name = if prefix.is_empty() {
                node.name().to_string()
            } else {
                format!("{prefix}.{}", node.name())
            };
            let args: Vec<String> = node
                .inputs()
                .iter()
                .map(|i| values.get(i).cloned().unwrap_or_default())
                .collect();
            let out = match node.op() {
                Op::Input { .. } => continue,
                Op::SubGraph { graph, .. } => {
                    let outs = self.graph(graph, &name, &args)?;
                    outs.into_iter().next().unwrap_or_default()
                }
                Op::Cell(cell) => self.cell(cell.as_ref(), &name, &args)?,
            };
            values.insert(id, out);
        }
        Ok(g.graph_outputs()
            .iter()
            .map(|o| values.get(o).cloned().unwrap_or_default())
            .collect())
    }

    fn cell(&mut self, cell: &dyn Cell, name: &str, args: &[String]) -> crate::Result<String> {
        let unsupported = || crate::Error::Layer {
            layer: name.to_string(),
            message: format!("a `{}` cell has no ONNX export", cell.kind()),
        };
        let x = args.first().map(String::as_str).unwrap_or("");
        if let Some(q) = downcast::<Quantize>(cell) {
            return Ok(self.quantize(name, x, &q.quant));
        }
        if let Some(d) = downcast::<Dequantize>(cell) {
            return Ok(self.dequantize(name, x, &d.quant));
        }
        if let Some(r) = downcast::<Requantize>(cell) {
            return Ok(self.requantize(name, x, r));
        }
        if let Some(r) = downcast::<Int8Relu>(cell) {
            let z = self.init(
                &format!("{name}.zero_point"),
                DataType::Uint8,
                &[],
                vec![r.zero_point],
            );
            return Ok(self.node("Max", name, &[x, &z], vec![]));
        }
        if let Some(p) = downcast::<Int8MaxPool>(cell) {
            let (k, s, pad) = (p.kernel as i64, p.stride as i64, p.padding as i64);
            return Ok(self.node(
                "MaxPool",
                name,
                &[x],
                vec![
                    ints("kernel_shape", &[k, k]),
                    ints("strides", &[s, s]),
                    ints("pads", &[pad; 4]),
                ],
            ));
        }
        if let Some(p) = downcast::<gstick_nn::cells::Pool2d>(cell) {
            let op = match p.kind {
                gstick_nn::cells::PoolKind::Max => "MaxPool",
                gstick_nn::cells::PoolKind::Avg => "AveragePool",
            };
            let (k, s, pad) = (p.kernel as i64, p.stride as i64, p.padding as i64);
            let mut attrs = vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                ints("pads", &[pad; 4]),
            ];
            if p.kind == gstick_nn::cells::PoolKind::Avg {
                // Padding counts as zeros in our average, as in PyTorch.
                attrs.push(int("count_include_pad", 1));
            }
            return Ok(self.node(op, name, &[x], attrs));
        }
        if let Some(f) = downcast::<Flatten>(cell) {
            if f.start_dim != 1 {
                return Err(unsupported());
            }
            return Ok(self.node("Flatten", name, &[x], vec![int("axis", 1)]));
        }
        if let Some(c) = downcast::<Int8Conv2d>(cell) {
            let xf = self.dequantize(&format!("{name}.input"), x, &c.input);
            let (co, kh, kw) = (
                c.weights.rows.rows as i64,
                c.kernel.0 as i64,
                c.kernel.1 as i64,
            );
            let ci = c.weights.rows.cols as i64 / (kh * kw);
            let w = self.weight(name, &c.weights, &[co, ci, kh, kw]);
            let b = self.f32s(&format!("{name}.bias"), &[co], &c.weights.bias);
            let (s, p, d) = (c.stride as i64, c.padding as i64, c.dilation as i64);
            let y = self.node(
                "Conv",
                &format!("{name}.conv"),
                &[&xf, &w, &b],
                vec![
                    ints("kernel_shape", &[kh, kw]),
                    ints("strides", &[s, s]),
                    ints("pads", &[p; 4]),
                    ints("dilations", &[d, d]),
                    int("group", 1),
                ],
            );
            let y = self.batch_norm(name, &y, &c.weights);
            return Ok(self.finish(name, &y, &c.out));
        }
        if let Some(l) = downcast::<Int8Linear>(cell) {
            let xf = self.dequantize(&format!("{name}.input"), x, &l.input);
            let (n, k) = (l.weights.rows.rows as i64, l.weights.rows.cols as i64);
            let w = self.weight(name, &l.weights, &[n, k]);
            let b = self.f32s(&format!("{name}.bias"), &[n], &l.weights.bias);
            let y = self.node(
                "Gemm",
                &format!("{name}.gemm"),
                &[&xf, &w, &b],
                vec![int("transB", 1)],
            );
            return Ok(self.finish(name, &y, &l.out));
        }
        if let Some(a) = downcast::<Int8Add>(cell) {
            let y0 = args.get(1).map(String::as_str).unwrap_or("");
            let fa = self.dequantize(&format!("{name}.a"), x, &a.a);
            let fb = self.dequantize(&format!("{name}.b"), y0, &a.b);
            let s = self.node("Add", &format!("{name}.add"), &[&fa, &fb], vec![]);
            return Ok(match &a.then {
                Some(r) => {
                    let sum = self.finish(&format!("{name}.sum"), &s, &a.out);
                    self.requantize(name, &sum, r)
                }
                None => self.finish(name, &s, &a.out),
            });
        }
        if let Some(act) = downcast::<Activation>(cell) {
            if act.0 == ActivationKind::Relu {
                return Ok(self.node("Relu", name, &[x], vec![]));
            }
            return Err(unsupported());
        }
        if cell.kind() == "GlobalAvgPool" {
            let p = self.node("GlobalAveragePool", &format!("{name}.pool"), &[x], vec![]);
            return Ok(self.node("Flatten", name, &[&p], vec![int("axis", 1)]));
        }
        if let Some(c) = downcast::<Conv2d>(cell) {
            let w = c.weight.tensor();
            let dims: Vec<i64> = w.dims().iter().map(|&d| d as i64).collect();
            let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
            let wn = self.f32s(&format!("{name}.weight"), &dims, &wv);
            let mut inputs = vec![x.to_string(), wn];
            if let Some(b) = &c.bias {
                let bv: Vec<f32> = b.tensor().to_vec1()?;
                inputs.push(self.f32s(&format!("{name}.bias"), &[dims[0]], &bv));
            }
            let cf = c.config;
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            return Ok(self.node(
                "Conv",
                name,
                &refs,
                vec![
                    ints("kernel_shape", &dims[2..]),
                    ints("strides", &[cf.stride as i64; 2]),
                    ints("pads", &[cf.padding as i64; 4]),
                    ints("dilations", &[cf.dilation as i64; 2]),
                    int("group", cf.groups as i64),
                ],
            ));
        }
        if let Some(l) = downcast::<Linear>(cell) {
            let w = l.weight.tensor();
            let (n, k) = w.dims2()?;
            let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
            let wn = self.f32s(&format!("{name}.weight"), &[n as i64, k as i64], &wv);
            let bv: Vec<f32> = match &l.bias {
                Some(b) => b.tensor().to_vec1()?,
                None => vec![0.0; n],
            };
            let bn = self.f32s(&format!("{name}.bias"), &[n as i64], &bv);
            return Ok(self.node("Gemm", name, &[x, &wn, &bn], vec![int("transB", 1)]));
        }
        Err(unsupported())
    }
}

/// What [`export_onnx`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OnnxReport {
    pub path: String,
    pub nodes: usize,
    pub initializers: usize,
    pub bytes: usize,
}

/// Writes `net` (an int8 deploy CNN; float cells are exported as float) as an ONNX QDQ model with
/// input `input` of shape (batch, channels, height, width) and output `logits`. The file is
/// written atomically and must not exist.
pub fn export_onnx(
    net: &Network,
    channels: usize,
    height: usize,
    width: usize,
    path: &Path,
) -> crate::Result<OnnxReport> {
    if path.exists() {
        return Err(export_error(
            path,
            "already exists (outputs are never overwritten)",
        ));
    }
    let mut b = Builder::default();
    b.used.insert("input".into(), 1);
    let outputs = b.graph(net, "", &["input".to_string()])?;
    let [last] = outputs.as_slice() else {
        return Err(export_error(
            path,
            "the network must have exactly one output",
        ));
    };
    // Name the output `logits`.
    let logits = b.node("Identity", "logits", &[last], vec![]);
    let classes = net.nodes_recursive().into_iter().rev().find_map(|(_, n)| {
        let c = n.cell()?;
        downcast::<Int8Linear>(c.as_ref())
            .map(|l| l.weights.rows.rows)
            .or_else(|| downcast::<Linear>(c.as_ref()).map(|l| l.out_features()))
    });
    let out_dims = vec![
        dim_param("batch"),
        classes.map_or_else(|| dim_param("classes"), |c| dim_value(c as i64)),
    ];
    let graph = GraphProto {
        name: Some("golden_stick_int8".into()),
        node: std::mem::take(&mut b.nodes),
        initializer: std::mem::take(&mut b.initializers),
        input: vec![tensor_value(
            "input",
            DataType::Float,
            vec![
                dim_param("batch"),
                dim_value(channels as i64),
                dim_value(height as i64),
                dim_value(width as i64),
            ],
        )],
        output: vec![tensor_value(&logits, DataType::Float, out_dims)],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("golden-stick".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        ..Default::default()
    };
    let bytes = model.encode_to_vec();
    gstick_nn::atomic::write_bytes(path, &bytes)?;
    let g = model
        .graph
        .as_ref()
        .map(|g| (g.node.len(), g.initializer.len()))
        .unwrap_or_default();
    Ok(OnnxReport {
        path: path.display().to_string(),
        nodes: g.0,
        initializers: g.1,
        bytes: bytes.len(),
    })
}
