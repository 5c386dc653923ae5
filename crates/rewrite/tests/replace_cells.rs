//! The cell-replacement helpers: every cell of a graph and its sub-graphs visited in execution
//! order under its qualified name, replaced in one transaction, or one cell by name.

use gstick_rewrite::{Error, Graph, Op, Payload};

#[derive(Clone, Debug, PartialEq)]
struct Toy(&'static str);

impl Payload for Toy {
    fn kind(&self) -> &str {
        self.0
    }
    fn summary(&self) -> String {
        String::new()
    }
}

/// x -> stem(Conv) -> block[conv(Conv) -> relu] -> head(Linear)
fn net() -> Graph<Toy> {
    let mut block = Graph::new();
    let bx = block.add_input("x");
    let c = block.add_cell("conv", Toy("Conv"), &[bx]).unwrap();
    let r = block.add_cell("relu", Toy("ReLU"), &[c]).unwrap();
    block.set_outputs(&[r]).unwrap();
    let mut g = Graph::new();
    let x = g.add_input("x");
    let stem = g.add_cell("stem", Toy("Conv"), &[x]).unwrap();
    let b = g.add_subgraph("layer1", "Block", block, &[stem]).unwrap();
    let head = g.add_cell("head", Toy("Linear"), &[b]).unwrap();
    g.set_outputs(&[head]).unwrap();
    g
}

fn kinds(g: &Graph<Toy>) -> Vec<(String, String)> {
    g.nodes_recursive()
        .into_iter()
        .map(|(n, node)| (n, node.kind().to_string()))
        .collect()
}

#[test]
fn replace_cells_visits_every_cell_in_order_and_keeps_names_and_wiring() {
    let mut g = net();
    let mut seen = Vec::new();
    let replaced = g
        .replace_cells(|site| {
            seen.push((
                site.qualified.to_string(),
                site.name.to_string(),
                site.depth,
            ));
            Ok::<_, Error>((site.cell.0 == "Conv").then_some(Toy("QuantConv")))
        })
        .unwrap();
    assert_eq!(
        seen,
        vec![
            ("stem".to_string(), "stem".to_string(), 0),
            ("layer1.conv".into(), "conv".into(), 1),
            ("layer1.relu".into(), "relu".into(), 1),
            ("head".into(), "head".into(), 0),
        ]
    );
    assert_eq!(replaced, vec!["stem".to_string(), "layer1.conv".into()]);
    let k = kinds(&g);
    assert!(k.contains(&("stem".into(), "QuantConv".into())), "{k:?}");
    assert!(
        k.contains(&("layer1.conv".into(), "QuantConv".into())),
        "{k:?}"
    );
    // The replacement is wired where the old cell was.
    let block = g.subgraph(g.find("layer1").unwrap()).unwrap();
    let relu = block.find("relu").unwrap();
    let conv = block.find("conv").unwrap();
    assert_eq!(block.inputs_of(relu).unwrap(), &[conv]);
    assert_eq!(
        g.inputs_of(g.find("layer1").unwrap()).unwrap(),
        &[g.find("stem").unwrap()]
    );
}

#[test]
fn replace_cells_is_all_or_nothing() {
    let mut g = net();
    let before = kinds(&g);
    let err = g
        .replace_cells(|site| match site.qualified {
            "head" => Err(Error::NoSuchName("refused".into())),
            _ => Ok(Some(Toy("Other"))),
        })
        .unwrap_err();
    assert_eq!(err, Error::NoSuchName("refused".into()));
    assert_eq!(
        kinds(&g),
        before,
        "a failed replacement left changes behind"
    );
}

#[test]
fn replace_named_reaches_into_sub_graphs_and_refuses_non_cells() {
    let mut g = net();
    g.replace_named("layer1.relu", Toy("GELU")).unwrap();
    assert!(kinds(&g).contains(&("layer1.relu".into(), "GELU".into())));
    assert!(matches!(
        g.replace_named("layer1.nothing", Toy("X")),
        Err(Error::NoSuchName(_))
    ));
    assert!(matches!(
        g.replace_named("layer1", Toy("X")),
        Err(Error::NotCell(_))
    ));
    assert!(matches!(
        g.replace_named("x", Toy("X")),
        Err(Error::NotCell(_))
    ));
}

#[test]
fn edit_graphs_visits_the_graph_then_each_sub_graph() {
    let mut g = net();
    let mut prefixes = Vec::new();
    g.edit_graphs(|prefix, sub| {
        prefixes.push(prefix.to_string());
        // Append a marker cell after each graph's first input.
        let x = sub.graph_inputs()[0];
        sub.insert(sub.after(x), "marker", Op::Cell(Toy("Marker")), &[x])?;
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(prefixes, vec![String::new(), "layer1".to_string()]);
    let k = kinds(&g);
    assert!(k.contains(&("marker".into(), "Marker".into())), "{k:?}");
    assert!(
        k.contains(&("layer1.marker".into(), "Marker".into())),
        "{k:?}"
    );

    let before = kinds(&g);
    let result = g.edit_graphs(|prefix, sub| {
        let x = sub.graph_inputs()[0];
        sub.insert(sub.after(x), "second", Op::Cell(Toy("M")), &[x])?;
        if prefix == "layer1" {
            return Err(Error::NoSuchName("stop".into()));
        }
        Ok(())
    });
    assert!(result.is_err());
    assert_eq!(kinds(&g), before, "a failed edit left changes behind");
}
