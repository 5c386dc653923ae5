//! Folding BatchNorm2d into the Conv2d before it, for inference: one pattern rewrite.

use gstick_rewrite::{Arg, Graph, Match, NewNode, Pattern, PatternEngine};

use crate::cell::downcast;
use crate::cells::{BatchNorm2d, Conv2d};
use crate::{Cell, Network, Result};

/// Replaces every Conv2d -> BatchNorm2d pair (the conv read by nothing else) by one Conv2d with
/// folded weight and bias, computing the same eval-mode output. The fused conv keeps the conv's
/// name. Returns whether anything was fused.
pub fn fuse_conv_bn(net: &mut Network) -> Result<bool> {
    let engine = PatternEngine::new(Pattern::chain(&["Conv2d", "BatchNorm2d"]), fold);
    Ok(engine.apply(net)?)
}

fn fold(
    graph: &Graph<Box<dyn Cell>>,
    m: &Match,
) -> gstick_rewrite::Result<Vec<NewNode<Box<dyn Cell>>>> {
    let conv_id = m.get("Conv2d")?;
    let bn_id = m.get("BatchNorm2d")?;
    let conv_node = graph.node(conv_id)?;
    let cell_of = |id| graph.node(id).ok().and_then(|n| n.cell());
    let (Some(conv), Some(bn)) = (
        cell_of(conv_id).and_then(|c| downcast::<Conv2d>(c.as_ref())),
        cell_of(bn_id).and_then(|c| downcast::<BatchNorm2d>(c.as_ref())),
    ) else {
        return Ok(Vec::new());
    };
    let fused = folded_conv(conv, bn).map_err(|e| {
        gstick_rewrite::Error::Replacement(format!(
            "folding `{}` into `{}`: {e}",
            graph.name_of(bn_id).unwrap_or("?"),
            conv_node.name()
        ))
    })?;
    let input = conv_node
        .inputs()
        .first()
        .copied()
        .ok_or_else(|| gstick_rewrite::Error::Replacement("conv without input".into()))?;
    Ok(vec![NewNode::cell(
        conv_node.name(),
        Box::new(fused) as Box<dyn Cell>,
        vec![Arg::Node(input)],
    )])
}

/// W' = W * s[o], b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps).
pub fn folded_conv(conv: &Conv2d, bn: &BatchNorm2d) -> Result<Conv2d> {
    let (scale, shift) = bn.eval_affine()?;
    let out = conv.out_channels();
    let w = conv
        .weight
        .tensor()
        .broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
    let b = match &conv.bias {
        Some(b) => ((b.tensor() * &scale)? + &shift)?,
        None => shift,
    };
    Conv2d::from_tensors(w.detach(), Some(b.detach()), conv.config)
}
