//! Pattern matching and replacement on small graphs built here.

use gstick_rewrite::{Arg, Error, Graph, Match, NewNode, NodeId, Pattern, PatternEngine, Payload};

#[derive(Clone, Debug, PartialEq)]
struct Toy(String);

impl Payload for Toy {
    fn kind(&self) -> &str {
        &self.0
    }
}

fn toy(kind: &str) -> Toy {
    Toy(kind.to_string())
}

/// Replaces a Conv2d -> BatchNorm2d chain by one "ConvBn" node reading the conv's input.
fn fuse(graph: &Graph<Toy>, m: &Match) -> gstick_rewrite::Result<Vec<NewNode<Toy>>> {
    let conv = m.get("Conv2d")?;
    let input = graph.inputs_of(conv)?[0];
    let name = graph.name_of(conv)?.to_string();
    Ok(vec![NewNode::cell(
        name,
        toy("ConvBn"),
        vec![Arg::Node(input)],
    )])
}

fn kinds(g: &Graph<Toy>) -> Vec<String> {
    g.nodes().map(|(_, n)| n.kind().to_string()).collect()
}

/// x -> conv -> bn -> relu -> conv_2 -> bn_2 -> out
fn two_blocks() -> Graph<Toy> {
    let mut g = Graph::new();
    let mut prev = g.add_input("x");
    for kind in ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d"] {
        prev = g
            .add_cell(&kind.to_lowercase(), toy(kind), &[prev])
            .unwrap();
    }
    g.set_outputs(&[prev]).unwrap();
    g
}

#[test]
fn chain_pattern_names_and_shape() {
    let p = Pattern::chain(&["Conv2d", "BatchNorm2d", "Conv2d"]);
    assert_eq!(p.name(), "Conv2d_1");
    assert_eq!(p.kind(), Some("Conv2d"));
    let bn = &p.inputs().unwrap()[0];
    assert_eq!(bn.kind(), Some("BatchNorm2d"));
    assert_eq!(bn.inputs().unwrap()[0].name(), "Conv2d");
    assert!(bn.inputs().unwrap()[0].inputs().is_none());
}

#[test]
fn chain_pattern_replaces_every_match() {
    let mut g = two_blocks();
    let engine = PatternEngine::new(Pattern::chain(&["Conv2d", "BatchNorm2d"]), fuse);
    assert!(engine.apply(&mut g).unwrap());
    assert_eq!(kinds(&g), ["Input", "ConvBn", "ReLU", "ConvBn"]);
    let out = g.graph_outputs()[0];
    assert_eq!(g.node(out).unwrap().kind(), "ConvBn");
    assert_eq!(g.name_of(out).unwrap(), "conv2d_1");
    // Nothing left to match.
    assert!(!engine.apply(&mut g).unwrap());
}

#[test]
fn leaky_match_is_not_replaced() {
    // The conv output is also read by a skip connection, so fusing it away would lose a value.
    let mut g = Graph::new();
    let x = g.add_input("x");
    let conv = g.add_cell("conv", toy("Conv2d"), &[x]).unwrap();
    let bn = g.add_cell("bn", toy("BatchNorm2d"), &[conv]).unwrap();
    let add = g.add_cell("add", toy("Add"), &[bn, conv]).unwrap();
    g.set_outputs(&[add]).unwrap();
    let pattern = Pattern::chain(&["Conv2d", "BatchNorm2d"]);
    let m = pattern.match_at(&g, bn).unwrap();
    assert!(m.is_leaky(&g));
    let engine = PatternEngine::new(pattern, fuse);
    assert!(!engine.apply(&mut g).unwrap());
    assert_eq!(kinds(&g), ["Input", "Conv2d", "BatchNorm2d", "Add"]);
}

#[test]
fn inner_node_that_is_a_graph_output_is_leaky() {
    let mut g = two_blocks();
    let conv = g.find("conv2d").unwrap();
    let last = g.graph_outputs()[0];
    g.set_outputs(&[last, conv]).unwrap();
    let engine = PatternEngine::new(Pattern::chain(&["Conv2d", "BatchNorm2d"]), fuse);
    assert!(engine.apply(&mut g).unwrap());
    // Only the second pair is fused; the first conv is an output.
    assert_eq!(
        kinds(&g),
        ["Input", "Conv2d", "BatchNorm2d", "ReLU", "ConvBn"]
    );
}

#[test]
fn tree_pattern_with_wildcards() {
    // add(relu(a), b) with any a, b -> fused "AddRelu"(a, b)
    let mut g = Graph::new();
    let x = g.add_input("x");
    let y = g.add_input("y");
    let r = g.add_cell("r", toy("ReLU"), &[x]).unwrap();
    let add = g.add_cell("add", toy("Add"), &[r, y]).unwrap();
    let other = g.add_cell("add2", toy("Add"), &[x, y]).unwrap(); // first arg not a ReLU: no match
    let cat = g.add_cell("cat", toy("Concat"), &[add, other]).unwrap();
    g.set_outputs(&[cat]).unwrap();
    let pattern = Pattern::node("sum", "Add").with_inputs(vec![
        Pattern::node("act", "ReLU").with_inputs(vec![Pattern::any("a")]),
        Pattern::any("b"),
    ]);
    let m = pattern.match_at(&g, add).unwrap();
    assert_eq!(m.get("a").unwrap(), x);
    assert_eq!(m.get("b").unwrap(), y);
    assert_eq!(m.inner().len(), 2);
    assert!(pattern.match_at(&g, other).is_none());
    let engine = PatternEngine::new(pattern, |g: &Graph<Toy>, m: &Match| {
        let _ = g;
        Ok(vec![NewNode::cell(
            "add_relu",
            toy("AddRelu"),
            vec![Arg::Node(m.get("a")?), Arg::Node(m.get("b")?)],
        )])
    });
    assert!(engine.apply(&mut g).unwrap());
    assert_eq!(kinds(&g), ["Input", "Input", "AddRelu", "Add", "Concat"]);
    let fused = g.find("add_relu").unwrap();
    assert_eq!(g.inputs_of(fused).unwrap(), &[x, y]);
    assert_eq!(g.inputs_of(cat).unwrap()[0], fused);
}

#[test]
fn input_count_must_agree() {
    let mut g = Graph::new();
    let x = g.add_input("x");
    let add = g.add_cell("add", toy("Add"), &[x, x]).unwrap();
    g.set_outputs(&[add]).unwrap();
    let one = Pattern::node("a", "Add").with_inputs(vec![Pattern::any("p")]);
    assert!(one.match_at(&g, add).is_none());
    let two = Pattern::node("a", "Add").with_inputs(vec![Pattern::any("p"), Pattern::any("q")]);
    assert!(two.match_at(&g, add).is_some());
}

#[test]
fn applies_inside_subgraphs() {
    let inner = two_blocks();
    let mut g = Graph::new();
    let x = g.add_input("x");
    let b0 = g
        .add_subgraph("block0", "Block", inner.clone(), &[x])
        .unwrap();
    let b1 = g.add_subgraph("block1", "Block", inner, &[b0]).unwrap();
    g.set_outputs(&[b1]).unwrap();
    let engine = PatternEngine::new(Pattern::chain(&["Conv2d", "BatchNorm2d"]), fuse);
    assert!(engine.apply(&mut g).unwrap());
    for b in [b0, b1] {
        assert_eq!(
            kinds(g.subgraph(b).unwrap()),
            ["Input", "ConvBn", "ReLU", "ConvBn"]
        );
    }
}

#[test]
fn failing_replacement_leaves_graph_intact() {
    // The first match is replaced, then the second fails: the whole apply is rolled back.
    let mut g = two_blocks();
    let calls = std::cell::Cell::new(0);
    let engine = PatternEngine::new(
        Pattern::chain(&["Conv2d", "BatchNorm2d"]),
        |g: &Graph<Toy>, m: &Match| {
            calls.set(calls.get() + 1);
            if calls.get() == 2 {
                return Err(Error::Replacement("cannot fold this one".into()));
            }
            fuse(g, m)
        },
    );
    let err = engine.apply(&mut g).unwrap_err();
    assert_eq!(err, Error::Replacement("cannot fold this one".into()));
    assert_eq!(calls.get(), 2);
    assert_eq!(
        kinds(&g),
        [
            "Input",
            "Conv2d",
            "BatchNorm2d",
            "ReLU",
            "Conv2d",
            "BatchNorm2d"
        ]
    );
}

#[test]
fn empty_replacement_skips_the_match() {
    let mut g = two_blocks();
    let engine = PatternEngine::new(
        Pattern::chain(&["Conv2d", "BatchNorm2d"]),
        |_: &Graph<Toy>, _: &Match| Ok(vec![]),
    );
    assert!(!engine.apply(&mut g).unwrap());
    assert_eq!(g.len(), 6);
}

#[test]
fn pattern_from_node_matches_its_source() {
    let g = two_blocks();
    let relu = g.find("relu").unwrap();
    let p = Pattern::from_node(&g, relu).unwrap();
    assert_eq!(p.kind(), Some("ReLU"));
    let m = p.match_at(&g, relu).unwrap();
    let ids: Vec<NodeId> = m.inner();
    assert_eq!(ids.len(), 3); // relu, bn, conv (x is a wildcard)
                              // It does not match elsewhere: the second BN is not a ReLU.
    assert!(p.match_at(&g, g.graph_outputs()[0]).is_none());
}
