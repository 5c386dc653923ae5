//! Physical channel removal: every member of a channel group loses the same channels in one
//! transaction (producers their weight rows and bias, carriers their per-channel parameters,
//! consumers their weight columns), so the network is smaller and still valid; any failure
//! leaves it as it was. `mask_channels` is the masked full-width equivalent (the channels made
//! exactly zero), which masked training uses and which the physical network must equal.

use candle_core::{Device, Tensor};
use gstick_nn::cell::downcast;
use gstick_nn::cells::{BatchNorm2d, Conv2d, Linear};
use gstick_nn::{Cell, Network, Param};

use crate::channels::{ChannelGroup, Role};
use crate::{Error, Result};

/// Keeps only channels `keep` (ascending, distinct, at least one) of `group` in `net`.
pub fn prune_channels(net: &mut Network, group: &ChannelGroup, keep: &[usize]) -> Result<()> {
    check(group, keep)?;
    let index = Tensor::from_vec(
        keep.iter().map(|&k| k as u32).collect::<Vec<u32>>(),
        keep.len(),
        &Device::Cpu,
    )?;
    net.transaction(|net| {
        for m in &group.members {
            let cell = cell_at(net, &m.name)?;
            let pruned = slice_cell(cell.as_ref(), m.role, &index, keep.len())
                .map_err(|e| layer_error(&m.name, e))?;
            replace_at(net, &m.name, pruned)?;
        }
        Ok(())
    })
}

/// Sets channels `pruned` of `group` to exactly zero in `net` (producers' rows and bias, and
/// the carriers' scales and shifts), keeping every shape.
pub fn mask_channels(net: &mut Network, group: &ChannelGroup, pruned: &[usize]) -> Result<()> {
    if let Some(&k) = pruned.iter().find(|&&k| k >= group.channels) {
        return Err(group_error(
            group,
            format!(
                "channel {k} is out of range (the group has {})",
                group.channels
            ),
        ));
    }
    let mut mask = vec![1f32; group.channels];
    for &k in pruned {
        mask[k] = 0.0;
    }
    let mask = Tensor::from_vec(mask, group.channels, &Device::Cpu)?;
    net.transaction(|net| {
        for m in &group.members {
            if m.role == Role::Consumer {
                continue;
            }
            let cell = cell_at(net, &m.name)?;
            let masked = mask_cell(cell.as_ref(), &mask).map_err(|e| layer_error(&m.name, e))?;
            replace_at(net, &m.name, masked)?;
        }
        Ok(())
    })
}

fn check(group: &ChannelGroup, keep: &[usize]) -> Result<()> {
    if let Some(why) = &group.fixed {
        return Err(group_error(group, format!("cannot be pruned: {why}")));
    }
    if keep.is_empty() {
        return Err(group_error(
            group,
            "at least one channel must be kept".into(),
        ));
    }
    if keep.windows(2).any(|w| w[0] >= w[1]) {
        return Err(group_error(
            group,
            "the kept channels must be ascending and distinct".into(),
        ));
    }
    if let Some(&k) = keep.last().filter(|&&k| k >= group.channels) {
        return Err(group_error(
            group,
            format!(
                "channel {k} is out of range (the group has {})",
                group.channels
            ),
        ));
    }
    Ok(())
}

fn group_error(group: &ChannelGroup, message: String) -> Error {
    Error::Group {
        group: group.name(),
        message,
    }
}

fn layer_error(layer: &str, e: Error) -> Error {
    match e {
        Error::Layer { .. } => e,
        other => Error::Layer {
            layer: layer.to_string(),
            message: other.to_string(),
        },
    }
}

/// The handles from the top graph down to the layer `name` (never empty).
fn path_to(net: &Network, name: &str) -> Result<Vec<gstick_rewrite::NodeId>> {
    net.resolve(name)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| Error::Layer {
            layer: name.to_string(),
            message: "no such layer".into(),
        })
}

fn cell_at(net: &Network, name: &str) -> Result<Box<dyn Cell>> {
    let path = path_to(net, name)?;
    let mut g = net;
    for &id in &path[..path.len() - 1] {
        g = g.subgraph(id)?;
    }
    let id = path[path.len() - 1];
    g.node(id)?
        .cell()
        .map(|c| c.clone_cell())
        .ok_or_else(|| Error::Layer {
            layer: name.to_string(),
            message: "is not a cell".into(),
        })
}

fn replace_at(net: &mut Network, name: &str, cell: Box<dyn Cell>) -> Result<()> {
    let path = path_to(net, name)?;
    let mut g = net;
    for &id in &path[..path.len() - 1] {
        g = g.subgraph_mut(id)?;
    }
    g.replace_cell(path[path.len() - 1], cell)?;
    Ok(())
}

fn param_like(p: &Param, t: Tensor) -> Result<Param> {
    Ok(if p.is_buffer() {
        Param::buffer(t)?
    } else {
        Param::weight(t)?
    })
}

fn select(p: &Param, index: &Tensor, dim: usize) -> Result<Param> {
    param_like(p, p.tensor().index_select(index, dim)?)
}

/// `cell` with the channels `index` kept in the dimension its role uses.
fn slice_cell(cell: &dyn Cell, role: Role, index: &Tensor, kept: usize) -> Result<Box<dyn Cell>> {
    if let Some(c) = downcast::<Conv2d>(cell) {
        let mut c = c.clone();
        match role {
            Role::Producer | Role::Carrier => {
                c.weight = select(&c.weight, index, 0)?;
                c.bias = c.bias.as_ref().map(|b| select(b, index, 0)).transpose()?;
                if role == Role::Carrier {
                    c.config.groups = kept; // depthwise: one group per channel
                }
            }
            Role::Consumer => c.weight = select(&c.weight, index, 1)?,
        }
        return Ok(Box::new(c));
    }
    if let Some(l) = downcast::<Linear>(cell) {
        let mut l = l.clone();
        match role {
            Role::Producer => {
                l.weight = select(&l.weight, index, 0)?;
                l.bias = l.bias.as_ref().map(|b| select(b, index, 0)).transpose()?;
            }
            Role::Consumer => l.weight = select(&l.weight, index, 1)?,
            Role::Carrier => return Err(unexpected(cell, role)),
        }
        return Ok(Box::new(l));
    }
    if let Some(bn) = downcast::<BatchNorm2d>(cell) {
        let mut bn = bn.clone();
        bn.weight = select(&bn.weight, index, 0)?;
        bn.bias = select(&bn.bias, index, 0)?;
        bn.running_mean = select(&bn.running_mean, index, 0)?;
        bn.running_var = select(&bn.running_var, index, 0)?;
        return Ok(Box::new(bn));
    }
    Err(unexpected(cell, role))
}

fn unexpected(cell: &dyn Cell, role: Role) -> Error {
    Error::Layer {
        layer: cell.kind().to_string(),
        message: format!("a {} cannot be a {role:?} of a channel group", cell.kind()),
    }
}

/// Multiplies channel-indexed parameters (dim 0) by `mask` (1 kept, 0 pruned).
fn masked(p: &Param, mask: &Tensor) -> Result<Param> {
    let t = p.tensor();
    let shape: Vec<usize> = (0..t.rank())
        .map(|d| if d == 0 { t.dims()[0] } else { 1 })
        .collect();
    param_like(p, t.broadcast_mul(&mask.reshape(shape)?)?)
}

fn mask_cell(cell: &dyn Cell, mask: &Tensor) -> Result<Box<dyn Cell>> {
    if let Some(c) = downcast::<Conv2d>(cell) {
        let mut c = c.clone();
        c.weight = masked(&c.weight, mask)?;
        c.bias = c.bias.as_ref().map(|b| masked(b, mask)).transpose()?;
        return Ok(Box::new(c));
    }
    if let Some(l) = downcast::<Linear>(cell) {
        let mut l = l.clone();
        l.weight = masked(&l.weight, mask)?;
        l.bias = l.bias.as_ref().map(|b| masked(b, mask)).transpose()?;
        return Ok(Box::new(l));
    }
    if let Some(bn) = downcast::<BatchNorm2d>(cell) {
        // gamma = beta = 0: the channel's output is exactly zero whatever its statistics.
        let mut bn = bn.clone();
        bn.weight = masked(&bn.weight, mask)?;
        bn.bias = masked(&bn.bias, mask)?;
        return Ok(Box::new(bn));
    }
    Err(Error::Layer {
        layer: cell.kind().to_string(),
        message: "cannot be masked".into(),
    })
}
