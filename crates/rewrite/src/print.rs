//! Human views of a graph: a node table and a Graphviz drawing.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::graph::qualify;
use crate::{Graph, NodeId, Op, Payload};

/// Options for [`Graph::to_dot`].
#[derive(Clone, Debug, Default)]
pub struct DotOptions {
    /// Draw each sub-graph's nodes inside a cluster instead of one box per sub-graph.
    pub expand_subgraphs: bool,
}

impl<P: Payload> Graph<P> {
    /// A table with one row per node: kind, qualified name, producers, users, summary. With
    /// `recursive`, sub-graph contents follow their sub-graph node, indented.
    pub fn table(&self, recursive: bool) -> String {
        let mut rows = vec![[
            "kind".to_string(),
            "name".into(),
            "inputs".into(),
            "users".into(),
            "summary".into(),
        ]];
        self.table_rows("", 0, recursive, &mut rows);
        let widths: Vec<usize> = (0..5)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, row) in rows.iter().enumerate() {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                let _ = writeln!(out, "{}", rule.join("  "));
            }
        }
        out
    }

    fn table_rows(&self, prefix: &str, depth: usize, recursive: bool, rows: &mut Vec<[String; 5]>) {
        let names = |ids: &[NodeId]| -> String {
            ids.iter()
                .filter_map(|&i| self.name_of(i).ok())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (id, node) in self.nodes() {
            let users = self.users(id).unwrap_or_default();
            let mut user_names = names(&users);
            if self.is_output(id) {
                user_names = if user_names.is_empty() {
                    "<output>".into()
                } else {
                    user_names + ", <output>"
                };
            }
            let summary = match &node.op {
                Op::Cell(p) => p.summary(),
                Op::Input { index } => format!("graph input {index}"),
                Op::SubGraph { graph, .. } => format!("{} nodes", graph.len()),
            };
            rows.push([
                format!("{}{}", "  ".repeat(depth), node.kind()),
                qualify(prefix, &node.name),
                names(&node.inputs),
                user_names,
                summary,
            ]);
            if let (true, Op::SubGraph { graph, .. }) = (recursive, &node.op) {
                graph.table_rows(&qualify(prefix, &node.name), depth + 1, recursive, rows);
            }
        }
    }

    /// The graph in Graphviz DOT.
    pub fn to_dot(&self, options: &DotOptions) -> String {
        let mut out = String::from("digraph network {\n  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\", fontsize=10];\n");
        self.dot_body("g", options, &mut out);
        for (i, &o) in self.outputs.iter().enumerate() {
            let _ = writeln!(out, "  \"out{i}\" [label=\"output {i}\", shape=oval];");
            let _ = writeln!(out, "  {} -> \"out{i}\";", dot_id("g", o, self, options));
        }
        out.push_str("}\n");
        out
    }

    fn dot_body(&self, prefix: &str, options: &DotOptions, out: &mut String) {
        for (id, node) in self.nodes() {
            let me = format!("\"{prefix}_{}\"", id.0);
            match (&node.op, options.expand_subgraphs) {
                (Op::SubGraph { graph, kind }, true) => {
                    let inner = format!("{prefix}_{}", id.0);
                    let _ = writeln!(
                        out,
                        "  subgraph \"cluster_{inner}\" {{\n  label=\"{} ({kind})\";",
                        escape(&node.name)
                    );
                    graph.dot_body(&inner, options, out);
                    out.push_str("  }\n");
                    // Wire this node's producers into the sub-graph's inputs.
                    for (k, (&producer, &sub_in)) in
                        node.inputs.iter().zip(&graph.inputs).enumerate()
                    {
                        let _ = writeln!(
                            out,
                            "  {} -> \"{inner}_{}\" [label=\"{k}\"];",
                            dot_id(prefix, producer, self, options),
                            sub_in.0
                        );
                    }
                }
                _ => {
                    let shape = if matches!(node.op, Op::Input { .. }) {
                        ", shape=oval"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        out,
                        "  {me} [label=\"{}\\n{}\"{shape}];",
                        escape(&node.name),
                        escape(node.kind())
                    );
                    for &producer in &node.inputs {
                        let _ = writeln!(
                            out,
                            "  {} -> {me};",
                            dot_id(prefix, producer, self, options)
                        );
                    }
                }
            }
        }
    }

    /// Renders the graph as SVG with Graphviz `dot` when it is installed.
    pub fn to_svg(&self, options: &DotOptions) -> std::io::Result<Vec<u8>> {
        render_svg(&self.to_dot(options))
    }
}

/// The DOT id of the value node `id` produces: for an expanded sub-graph, its first output.
fn dot_id<P: Payload>(prefix: &str, id: NodeId, graph: &Graph<P>, options: &DotOptions) -> String {
    if let (true, Ok(sub)) = (options.expand_subgraphs, graph.subgraph(id)) {
        if let Some(&o) = sub.outputs.first() {
            return dot_id(&format!("{prefix}_{}", id.0), o, sub, options);
        }
    }
    format!("\"{prefix}_{}\"", id.0)
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Runs Graphviz `dot -Tsvg` on `dot_source`. Fails with a clear message when `dot` is missing.
pub fn render_svg(dot_source: &str) -> std::io::Result<Vec<u8>> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot run Graphviz `dot` ({e}); install graphviz or write DOT instead"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(dot_source.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "dot failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}
