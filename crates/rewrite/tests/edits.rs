//! Unit tests of every graph edit and query, on small graphs built here.

use gstick_rewrite::{Arg, DotOptions, Error, Graph, NewNode, NodeId, Op, Payload, Position};

/// A toy cell: only its kind matters to the IR.
#[derive(Clone, Debug, PartialEq)]
struct Toy(&'static str);

impl Payload for Toy {
    fn kind(&self) -> &str {
        self.0
    }
    fn summary(&self) -> String {
        format!("toy {}", self.0)
    }
}

/// x -> conv -> bn -> relu -> out
fn chain() -> (Graph<Toy>, [NodeId; 4]) {
    let mut g = Graph::new();
    let x = g.add_input("x");
    let conv = g.add_cell("conv", Toy("Conv2d"), &[x]).unwrap();
    let bn = g.add_cell("bn", Toy("BatchNorm2d"), &[conv]).unwrap();
    let relu = g.add_cell("relu", Toy("ReLU"), &[bn]).unwrap();
    g.set_outputs(&[relu]).unwrap();
    (g, [x, conv, bn, relu])
}

fn names(g: &Graph<Toy>) -> Vec<String> {
    g.nodes().map(|(_, n)| n.name().to_string()).collect()
}

/// Every invariant the IR promises: producers precede users, names resolve to their nodes.
fn assert_consistent(g: &Graph<Toy>) {
    let order = g.node_ids();
    for (pos, &id) in order.iter().enumerate() {
        let node = g.node(id).unwrap();
        assert_eq!(g.get(node.name()), Some(id));
        for &p in node.inputs() {
            assert!(
                order[..pos].contains(&p),
                "{} reads a later node",
                node.name()
            );
        }
    }
    for &o in g.graph_outputs() {
        assert!(g.node(o).is_ok());
    }
}

#[test]
fn queries_inputs_users_outputs() {
    let (g, [x, conv, bn, relu]) = chain();
    assert_eq!(g.graph_inputs(), &[x]);
    assert_eq!(g.graph_outputs(), &[relu]);
    assert_eq!(g.inputs_of(bn).unwrap(), &[conv]);
    assert_eq!(g.users(conv).unwrap(), vec![bn]);
    assert_eq!(g.users(relu).unwrap(), Vec::<NodeId>::new());
    assert_eq!(g.get("bn"), Some(bn));
    assert_eq!(g.get("missing"), None);
    assert!(matches!(g.find("missing"), Err(Error::NoSuchName(_))));
    assert_eq!(names(&g), ["x", "conv", "bn", "relu"]);
    assert_eq!(g.node(conv).unwrap().kind(), "Conv2d");
    assert_eq!(g.node(x).unwrap().kind(), "Input");
}

#[test]
fn unique_names_are_generated() {
    let (mut g, [_, conv, ..]) = chain();
    assert_eq!(g.unique_name("conv"), "conv_1");
    assert_eq!(g.unique_name("fresh"), "fresh");
    let a = g
        .insert(
            Position::After(conv),
            "conv",
            Op::Cell(Toy("Identity")),
            &[conv],
        )
        .unwrap();
    let b = g
        .insert(Position::After(a), "conv", Op::Cell(Toy("Identity")), &[a])
        .unwrap();
    assert_eq!(g.name_of(a).unwrap(), "conv_1");
    assert_eq!(g.name_of(b).unwrap(), "conv_2");
    assert_consistent(&g);
}

#[test]
fn insert_before_and_after() {
    let (mut g, [x, conv, bn, relu]) = chain();
    let q = g
        .insert(
            g.after(conv),
            "fake_quant",
            Op::Cell(Toy("FakeQuant")),
            &[conv],
        )
        .unwrap();
    let rewired = g.replace_all_uses(conv, q).unwrap();
    assert_eq!(rewired, vec![bn]);
    assert_eq!(g.inputs_of(bn).unwrap(), &[q]);
    assert_eq!(g.inputs_of(q).unwrap(), &[conv]);
    let pre = g
        .insert(g.before(conv), "pre", Op::Cell(Toy("Scale")), &[x])
        .unwrap();
    g.set_input(conv, 0, pre).unwrap();
    assert_eq!(names(&g), ["x", "pre", "conv", "fake_quant", "bn", "relu"]);
    assert_eq!(g.graph_outputs(), &[relu]);
    assert_consistent(&g);
}

#[test]
fn insert_that_reads_a_later_node_is_rejected() {
    let (mut g, [_, conv, _, relu]) = chain();
    let before = names(&g);
    let err = g
        .insert(g.before(conv), "bad", Op::Cell(Toy("ReLU")), &[relu])
        .unwrap_err();
    assert!(matches!(err, Error::OrderViolation { .. }), "{err}");
    assert_eq!(names(&g), before);
}

#[test]
fn erase_unused_node() {
    let (mut g, [_, conv, ..]) = chain();
    let dead = g
        .insert(g.after(conv), "dead", Op::Cell(Toy("ReLU")), &[conv])
        .unwrap();
    let node = g.erase(dead).unwrap();
    assert_eq!(node.name(), "dead");
    assert!(matches!(g.node(dead), Err(Error::NoSuchNode(_))));
    assert_eq!(g.get("dead"), None);
    assert_consistent(&g);
}

#[test]
fn erase_with_users_is_an_error_and_changes_nothing() {
    let (mut g, [x, conv, _, relu]) = chain();
    let err = g.erase(conv).unwrap_err();
    assert_eq!(
        err,
        Error::HasUsers {
            node: "conv".into(),
            users: vec!["bn".into()]
        }
    );
    assert!(err.to_string().contains("still has users"));
    assert!(matches!(g.erase(relu), Err(Error::IsOutput(_))));
    assert!(matches!(g.erase(x), Err(Error::IsInput(_))));
    assert_eq!(names(&g), ["x", "conv", "bn", "relu"]);
}

#[test]
fn replace_one_by_one_keeps_name_and_users() {
    let (mut g, [_, conv, bn, _]) = chain();
    let x = g.graph_inputs()[0];
    let new = g
        .replace(
            conv,
            vec![NewNode::cell(
                "conv",
                Toy("QuantConv2d"),
                vec![Arg::Node(x)],
            )],
        )
        .unwrap();
    assert_eq!(
        g.name_of(new[0]).unwrap(),
        "conv",
        "a replacement may keep the old name"
    );
    assert_eq!(g.node(new[0]).unwrap().kind(), "QuantConv2d");
    assert_eq!(g.inputs_of(bn).unwrap(), &[new[0]]);
    assert!(g.node(conv).is_err());
    assert_consistent(&g);
}

#[test]
fn replace_one_by_many() {
    let (mut g, [x, conv, bn, _]) = chain();
    let new = g
        .replace(
            conv,
            vec![
                NewNode::cell("quant_in", Toy("FakeQuant"), vec![Arg::Node(x)]),
                NewNode::cell("conv", Toy("Conv2d"), vec![Arg::New(0)]),
                NewNode::cell("quant_out", Toy("FakeQuant"), vec![Arg::New(1)]),
            ],
        )
        .unwrap();
    assert_eq!(
        names(&g),
        ["x", "quant_in", "conv", "quant_out", "bn", "relu"]
    );
    assert_eq!(g.inputs_of(bn).unwrap(), &[new[2]]);
    assert_eq!(g.inputs_of(new[1]).unwrap(), &[new[0]]);
    assert_consistent(&g);
}

#[test]
fn replace_of_the_output_moves_the_output() {
    let (mut g, [_, _, bn, relu]) = chain();
    let new = g
        .replace(
            relu,
            vec![NewNode::cell("relu6", Toy("ReLU6"), vec![Arg::Node(bn)])],
        )
        .unwrap();
    assert_eq!(g.graph_outputs(), &[new[0]]);
}

#[test]
fn replace_errors_leave_graph_intact() {
    let (mut g, [x, conv, bn, relu]) = chain();
    let before = names(&g);
    // Into a missing node.
    let gone = g
        .insert(g.after(relu), "tmp", Op::Cell(Toy("ReLU")), &[relu])
        .unwrap();
    g.erase(gone).unwrap();
    let err = g
        .replace(
            gone,
            vec![NewNode::cell("n", Toy("ReLU"), vec![Arg::Node(x)])],
        )
        .unwrap_err();
    assert_eq!(err, Error::NoSuchNode(gone));
    // A new node reading a node after the replaced one (would be a cycle).
    let err = g
        .replace(
            conv,
            vec![NewNode::cell("n", Toy("ReLU"), vec![Arg::Node(bn)])],
        )
        .unwrap_err();
    assert!(matches!(err, Error::OrderViolation { .. }));
    // A forward reference among new nodes, after a valid first node: nothing is half-applied.
    let err = g
        .replace(
            conv,
            vec![
                NewNode::cell("ok", Toy("ReLU"), vec![Arg::Node(x)]),
                NewNode::cell("bad", Toy("ReLU"), vec![Arg::New(1)]),
            ],
        )
        .unwrap_err();
    assert_eq!(
        err,
        Error::BadNewNodeRef {
            index: 1,
            refers: 1
        }
    );
    assert!(matches!(
        g.replace(conv, vec![]),
        Err(Error::EmptyReplacement(_))
    ));
    assert!(matches!(
        g.replace(x, vec![NewNode::cell("n", Toy("ReLU"), vec![])]),
        Err(Error::IsInput(_))
    ));
    assert_eq!(names(&g), before);
    assert_eq!(g.inputs_of(bn).unwrap(), &[conv]);
    assert_consistent(&g);
}

#[test]
fn set_input_rewires_and_checks() {
    let (mut g, [x, conv, bn, relu]) = chain();
    g.set_input(relu, 0, conv).unwrap(); // skip bn
    assert_eq!(g.users(bn).unwrap(), Vec::<NodeId>::new());
    assert_eq!(g.users(conv).unwrap(), vec![bn, relu]);
    assert!(matches!(
        g.set_input(relu, 3, x),
        Err(Error::ArgOutOfRange {
            index: 3,
            count: 1,
            ..
        })
    ));
    assert!(matches!(
        g.set_input(conv, 0, relu),
        Err(Error::OrderViolation { .. })
    ));
    assert_eq!(g.inputs_of(conv).unwrap(), &[x]);
    g.erase(bn).unwrap();
    assert_consistent(&g);
}

#[test]
fn set_output_and_errors() {
    let (mut g, [_, conv, bn, _]) = chain();
    g.set_output(0, bn).unwrap();
    assert_eq!(g.graph_outputs(), &[bn]);
    assert!(matches!(
        g.set_output(1, conv),
        Err(Error::OutputOutOfRange { index: 1, count: 1 })
    ));
    g.set_outputs(&[bn, conv]).unwrap();
    assert_eq!(g.graph_outputs(), &[bn, conv]);
}

#[test]
fn attributes_are_free_form() {
    let (mut g, [_, conv, ..]) = chain();
    let node = g.node_mut(conv).unwrap();
    node.set_attr(
        "layer_quant_policy",
        serde_json::json!({"weight_bits": 4, "group": 64}),
    );
    node.set_attr("frozen", true);
    let node = g.node(conv).unwrap();
    assert_eq!(node.attr("layer_quant_policy").unwrap()["weight_bits"], 4);
    assert_eq!(node.attr("frozen"), Some(&serde_json::Value::Bool(true)));
    assert_eq!(node.attrs().len(), 2);
    assert_eq!(node.attr("absent"), None);
}

/// x -> stem -> block(conv1 -> relu -> conv2, + skip) -> head
fn with_block() -> Graph<Toy> {
    let mut block = Graph::new();
    let bx = block.add_input("x");
    let c1 = block.add_cell("conv1", Toy("Conv2d"), &[bx]).unwrap();
    let r = block.add_cell("relu", Toy("ReLU"), &[c1]).unwrap();
    let c2 = block.add_cell("conv2", Toy("Conv2d"), &[r]).unwrap();
    let add = block.add_cell("add", Toy("Add"), &[c2, bx]).unwrap();
    block.set_outputs(&[add]).unwrap();
    let mut g = Graph::new();
    let x = g.add_input("x");
    let stem = g.add_cell("stem", Toy("Conv2d"), &[x]).unwrap();
    let b = g
        .add_subgraph("layer1.0", "BasicBlock", block, &[stem])
        .unwrap();
    let head = g.add_cell("head", Toy("Linear"), &[b]).unwrap();
    g.set_outputs(&[head]).unwrap();
    g
}

#[test]
fn subgraphs_are_iterated_resolved_and_edited() {
    let mut g = with_block();
    let top: Vec<String> = g.nodes().map(|(_, n)| n.name().to_string()).collect();
    assert_eq!(top, ["x", "stem", "layer1.0", "head"]);
    let all: Vec<String> = g.nodes_recursive().into_iter().map(|(q, _)| q).collect();
    assert_eq!(
        all,
        [
            "x",
            "stem",
            "layer1.0",
            "layer1.0.x",
            "layer1.0.conv1",
            "layer1.0.relu",
            "layer1.0.conv2",
            "layer1.0.add",
            "head"
        ]
    );
    let path = g.resolve("layer1.0.conv2").unwrap();
    assert_eq!(path.len(), 2);
    let block = g.find("layer1.0").unwrap();
    assert!(matches!(
        g.subgraph_mut(g.find("head").unwrap()),
        Err(Error::NotSubGraph(_))
    ));
    let sub = g.subgraph_mut(block).unwrap();
    let relu = sub.find("relu").unwrap();
    let c1 = sub.find("conv1").unwrap();
    sub.replace(
        relu,
        vec![NewNode::cell("relu", Toy("ReLU6"), vec![Arg::Node(c1)])],
    )
    .unwrap();
    let kinds: Vec<String> = g
        .subgraph(block)
        .unwrap()
        .nodes()
        .map(|(_, n)| n.kind().to_string())
        .collect();
    assert_eq!(kinds, ["Input", "Conv2d", "ReLU6", "Conv2d", "Add"]);
}

#[test]
fn subgraph_arity_is_checked() {
    let mut g: Graph<Toy> = Graph::new();
    let x = g.add_input("x");
    let y = g.add_input("y");
    let mut sub = Graph::new();
    let sx = sub.add_input("x");
    sub.set_outputs(&[sx]).unwrap();
    let err = g.add_subgraph("s", "Block", sub, &[x, y]).unwrap_err();
    assert_eq!(
        err,
        Error::SubGraphArity {
            node: "s".into(),
            given: 2,
            expected: 1
        }
    );
}

#[test]
fn transaction_restores_on_failure() {
    let (mut g, [x, conv, bn, _]) = chain();
    let result: Result<(), Error> = g.transaction(|g| {
        let q = g.insert(g.after(conv), "q", Op::Cell(Toy("FakeQuant")), &[conv])?;
        g.replace_all_uses(conv, q)?;
        g.erase(x)?; // fails half way: inputs cannot be erased
        Ok(())
    });
    assert!(matches!(result, Err(Error::IsInput(_))));
    assert_eq!(names(&g), ["x", "conv", "bn", "relu"]);
    assert_eq!(g.inputs_of(bn).unwrap(), &[conv]);
}

#[test]
fn table_and_dot_show_every_node() {
    let g = with_block();
    let table = g.table(true);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("kind") && header.contains("users"),
        "{table}"
    );
    assert!(table.contains("layer1.0.conv2"), "{table}");
    let head_row = table.lines().find(|l| l.starts_with("Linear")).unwrap();
    assert!(
        head_row.contains("<output>") && head_row.contains("head"),
        "{head_row}"
    );
    let flat = g.table(false);
    assert!(!flat.contains("layer1.0.conv2"));
    let dot = g.to_dot(&DotOptions {
        expand_subgraphs: true,
    });
    assert!(
        dot.starts_with("digraph") && dot.contains("cluster_") && dot.contains("conv2\\nConv2d"),
        "{dot}"
    );
    let boxes = g.to_dot(&DotOptions::default());
    assert!(!boxes.contains("cluster_") && boxes.contains("layer1.0\\nBasicBlock"));
}

#[test]
fn svg_rendering_uses_graphviz_or_says_how_to_get_it() {
    let g = with_block();
    match g.to_svg(&DotOptions {
        expand_subgraphs: true,
    }) {
        Ok(svg) => {
            let text = String::from_utf8(svg).unwrap();
            assert!(text.contains("<svg") && text.contains("conv2"), "{text}");
        }
        Err(e) => {
            // Only acceptable when Graphviz is absent, and then the message must say so.
            let has_dot = std::process::Command::new("dot").arg("-V").output().is_ok();
            assert!(!has_dot, "dot is installed but rendering failed: {e}");
            assert!(e.to_string().contains("install graphviz"), "{e}");
        }
    }
}
