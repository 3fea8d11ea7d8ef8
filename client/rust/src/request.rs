//! What a call asks for ([`Request`]) and what it returns ([`Evaluation`], [`Chunk`]), and
//! their wire forms.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::graph::{Graph, Node};
use crate::pb;

/// What to evaluate. `Request::default()` differentiates the last node and returns every
/// node's results; set the fields you need:
///
/// ```
/// # let g = gradserve::Graph::new();
/// # let o = g.leaf(1.0);
/// let request = gradserve::Request { nodes: vec![o.clone()], ..Default::default() };
/// ```
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The nodes whose gradients seed the backward pass (default: the graph's last node).
    pub outputs: Vec<Node>,
    /// The outputs' seed gradients, one per output (default 1 each).
    pub seeds: Vec<f64>,
    /// Which nodes' results to return (default: `nodes` if given, else every node).
    pub selection: pb::Selection,
    /// The nodes to return, in this order (may repeat).
    pub nodes: Vec<Node>,
    /// When given, evaluates the graph at each of these rows of leaf values (one value per
    /// leaf, in leaf order) instead of the graph's own leaf values, in one call.
    pub rows: Vec<Vec<f64>>,
    /// Lets NaN and Inf through instead of failing the call.
    pub allow_non_finite: bool,
    /// [`crate::Client::stream`]'s most nodes per chunk (0: the server's default).
    pub chunk_size: u32,
    /// When given, a direction for the leaves, laid out like their values (one per leaf,
    /// row by row with `rows`): the results then carry `value_tangents` (Jacobian-vector
    /// products) and `grad_tangents` (for the leaves, Hessian-vector products).
    pub leaf_tangents: Vec<f64>,
    /// This call's deadline, from its start; wins over the client's timeout.
    pub timeout: Option<Duration>,
    /// Cancelling this token ends the call with [`Error::Cancelled`] (dropping the call's
    /// future or its [`crate::Chunks`] cancels it too, without an error to read).
    pub cancel: Option<CancellationToken>,
}

/// The selected nodes' values and gradients, row by row: `values[r * node_ids.len() + j]` is
/// node `node_ids[j]` at row `r`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub node_ids: Vec<u32>,
    pub values: Vec<f64>,
    pub grads: Vec<f64>,
    /// The number of rows (1 unless the request had more).
    pub rows: u32,
    /// The server's 16-byte digest of the graph's structure.
    pub plan_digest: Vec<u8>,
    /// With [`Request::leaf_tangents`]: each selected node's value tangent, laid out as
    /// `values`.
    pub value_tangents: Vec<f64>,
    /// With [`Request::leaf_tangents`]: each selected node's gradient tangent, laid out as
    /// `grads`.
    pub grad_tangents: Vec<f64>,
}

impl Evaluation {
    /// The value of the `j`-th selected node at row `row`.
    pub fn value(&self, row: usize, j: usize) -> f64 {
        self.values[row * self.node_ids.len() + j]
    }

    /// The gradient of the `j`-th selected node at row `row`.
    pub fn grad(&self, row: usize, j: usize) -> f64 {
        self.grads[row * self.node_ids.len() + j]
    }
}

impl From<pb::EvaluateResponse> for Evaluation {
    fn from(reply: pb::EvaluateResponse) -> Evaluation {
        Evaluation {
            node_ids: reply.node_ids,
            values: reply.values,
            grads: reply.grads,
            rows: reply.rows,
            plan_digest: reply.plan_digest,
            value_tangents: reply.value_tangents,
            grad_tangents: reply.grad_tangents,
        }
    }
}

/// One message of a stream: the results of the next part of the selection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    /// This chunk's nodes and their results, laid out as in one Evaluate reply.
    pub results: Evaluation,
    /// The number of selected nodes across the whole stream.
    pub total_nodes: u64,
    /// The request's row that this chunk's first row is (0 unless rows came in blocks).
    pub first_row: u32,
}

impl From<pb::GradientChunk> for Chunk {
    fn from(chunk: pb::GradientChunk) -> Chunk {
        Chunk {
            results: Evaluation {
                node_ids: chunk.node_ids,
                values: chunk.values,
                grads: chunk.grads,
                rows: chunk.rows,
                plan_digest: chunk.plan_digest,
                value_tangents: chunk.value_tangents,
                grad_tangents: chunk.grad_tangents,
            },
            total_nodes: chunk.total_nodes,
            first_row: chunk.first_row,
        }
    }
}

impl Request {
    /// The wire form for `graph`: its plan digest and leaf values when it has a digest and
    /// `reuse_plan`, else the whole graph.
    pub(crate) fn wire(
        &self,
        graph: &Graph,
        reuse_plan: bool,
    ) -> Result<pb::EvaluateRequest, Error> {
        let digest = if reuse_plan { graph.plan_digest() } else { None };
        let mut wire_graph = match digest {
            Some(_) => pb::Graph::default(),
            None => graph.to_proto(),
        };
        let leaves = graph.leaf_count();
        if graph.is_empty() {
            return Err(Error::Request("the graph is empty: add a node first".into()));
        }
        if let Some(row) = self.rows.iter().find(|row| row.len() != leaves) {
            return Err(Error::Request(format!(
                "a row has {} values; the graph has {leaves} leaves",
                row.len()
            )));
        }
        wire_graph.leaf_values = match self.rows.is_empty() {
            true => graph.tape().leaf_values.clone(),
            false => self.rows.concat(),
        };
        Ok(pb::EvaluateRequest {
            graph: Some(wire_graph),
            outputs: ids(graph, &self.outputs)?,
            seeds: self.seeds.clone(),
            selection: self.selection as i32,
            nodes: ids(graph, &self.nodes)?,
            chunk_size: self.chunk_size,
            plan_digest: digest.unwrap_or_default(),
            rows: self.rows.len() as u32,
            allow_non_finite: self.allow_non_finite,
            leaf_tangents: self.leaf_tangents.clone(),
        })
    }
}

fn ids(graph: &Graph, nodes: &[Node]) -> Result<Vec<u32>, Error> {
    nodes
        .iter()
        .map(|node| match node.graph() == graph {
            true => Ok(node.id()),
            false => Err(Error::Request(format!("node {} belongs to another graph", node.id()))),
        })
        .collect()
}
