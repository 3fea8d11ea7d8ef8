//! The graph builder: scalar nodes added in topological order, micrograd-style.
//!
//! A [`Graph`] is a handle to one shared tape of columns (the wire's `Graph` message, kept as
//! it will be sent); a [`Node`] is a position on it. Every method that adds a node returns
//! it, and a node reads only nodes added before it, so a graph is acyclic by construction.
//! Operators (`+ - * /`, unary `-`) and the methods below add op nodes; an `f64` operand
//! becomes a constant leaf.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Add, Div, Mul, Neg, Sub};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::pb;

/// A computation graph of scalar nodes. Cloning it clones the handle: both see one graph.
///
/// It remembers the plan digest the server returned for its structure; until a node is
/// added or a label changes, later calls send only that digest and the leaf values.
#[derive(Clone, Default)]
pub struct Graph {
    tape: Arc<Mutex<Tape>>,
}

/// One node of a [`Graph`]: its id (the position in topological order) and its graph.
#[derive(Clone)]
pub struct Node {
    graph: Graph,
    id: u32,
}

/// The graph's columns, and what the last calls left on it.
#[derive(Default)]
pub(crate) struct Tape {
    pub(crate) op_names: Vec<String>,
    op_index: HashMap<String, u32>, // op name -> its 1-based index in op_names
    pub(crate) node_ops: Vec<u32>,
    pub(crate) input_counts: Vec<u32>,
    pub(crate) input_ids: Vec<u32>,
    pub(crate) leaf_values: Vec<f64>,
    leaf_of: HashMap<u32, usize>, // leaf node id -> its position in leaf_values
    labels: Vec<String>,
    labelled: bool, // some label is non-empty: send them
    /// The server's plan digest for the current structure.
    pub(crate) digest: Option<Vec<u8>>,
    /// Per node, from the last `Client::backward`.
    pub(crate) values: Vec<f64>,
    pub(crate) grads: Vec<f64>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The tape, locked. A panic elsewhere while it was locked left it consistent (every
    /// mutation is complete before the lock is released or checked before it starts).
    pub(crate) fn tape(&self) -> MutexGuard<'_, Tape> {
        self.tape.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a leaf: a value the client gives (an input, a parameter).
    pub fn leaf(&self, value: f64) -> Node {
        let mut tape = self.tape();
        let id = tape.node_ops.len() as u32;
        let position = tape.leaf_values.len();
        tape.leaf_of.insert(id, position);
        tape.leaf_values.push(value);
        self.push(tape, 0, &[])
    }

    /// Adds a constant. On the wire a constant is a leaf; its gradient is computed too.
    pub fn constant(&self, value: f64) -> Node {
        self.leaf(value)
    }

    /// Adds a node applying the op called `op` (any op the server lists, third-party plugins'
    /// too) to `inputs`, in order.
    ///
    /// # Panics
    /// When an input belongs to another graph.
    pub fn apply<'a>(&self, op: &str, inputs: impl IntoIterator<Item = &'a Node>) -> Node {
        let ids: Vec<u32> = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| {
                assert!(input.graph == *self, "input {i} of {op:?} belongs to another graph");
                input.id
            })
            .collect();
        let mut tape = self.tape();
        let index = match tape.op_index.get(op) {
            Some(&index) => index,
            None => {
                tape.op_names.push(op.to_owned());
                let index = tape.op_names.len() as u32;
                tape.op_index.insert(op.to_owned(), index);
                index
            }
        };
        self.push(tape, index, &ids)
    }

    /// Adds x1 + x2 + ... + xn (the variadic op `sum`).
    pub fn sum<'a>(&self, inputs: impl IntoIterator<Item = &'a Node>) -> Node {
        self.apply("sum", inputs)
    }

    fn push(&self, mut tape: MutexGuard<'_, Tape>, op: u32, inputs: &[u32]) -> Node {
        tape.digest = None; // the structure changed
        tape.node_ops.push(op);
        tape.input_counts.push(inputs.len() as u32);
        tape.input_ids.extend_from_slice(inputs);
        tape.labels.push(String::new());
        Node { graph: self.clone(), id: tape.node_ops.len() as u32 - 1 }
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.tape().node_ops.len()
    }

    /// Whether the graph has no node yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of leaves (the length of one row of leaf values).
    pub fn leaf_count(&self) -> usize {
        self.tape().leaf_values.len()
    }

    /// The node with this id, if the graph has it.
    pub fn node(&self, id: u32) -> Option<Node> {
        ((id as usize) < self.len()).then(|| Node { graph: self.clone(), id })
    }

    /// The leaves, in id order (the order of a row of leaf values).
    pub fn leaves(&self) -> Vec<Node> {
        let tape = self.tape();
        let mut ids: Vec<u32> = tape.leaf_of.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().map(|id| Node { graph: self.clone(), id }).collect()
    }

    /// Changes a leaf's value; the structure (and its plan digest) stays.
    ///
    /// # Panics
    /// When `leaf` is not a leaf of this graph.
    pub fn set_leaf(&self, leaf: &Node, value: f64) {
        let mut tape = self.tape();
        let position = tape.leaf_of.get(&leaf.id).copied().filter(|_| leaf.graph == *self);
        let position =
            position.unwrap_or_else(|| panic!("node {} is not a leaf of this graph", leaf.id));
        tape.leaf_values[position] = value;
    }

    /// The server's digest of the current structure, which the next call sends instead of
    /// the structure: `None` before the first call and after the structure changed.
    pub fn plan_digest(&self) -> Option<Vec<u8>> {
        self.tape().digest.clone()
    }

    /// The graph's wire form, with its current leaf values.
    pub fn to_proto(&self) -> pb::Graph {
        let tape = self.tape();
        pb::Graph {
            op_names: tape.op_names.clone(),
            node_ops: tape.node_ops.clone(),
            input_counts: tape.input_counts.clone(),
            input_ids: tape.input_ids.clone(),
            leaf_values: tape.leaf_values.clone(),
            labels: if tape.labelled { tape.labels.clone() } else { Vec::new() },
        }
    }
}

impl PartialEq for Graph {
    /// The same graph (not merely equal columns).
    fn eq(&self, other: &Graph) -> bool {
        Arc::ptr_eq(&self.tape, &other.tape)
    }
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tape = self.tape();
        f.debug_struct("Graph")
            .field("nodes", &tape.node_ops.len())
            .field("leaves", &tape.leaf_values.len())
            .field("ops", &tape.op_names)
            .finish()
    }
}

impl Node {
    /// The node's id: its position in topological order.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The graph the node belongs to.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Names the node in the server's error messages, and returns it.
    pub fn label(self, label: &str) -> Node {
        let mut tape = self.graph.tape();
        let at = self.id as usize;
        if tape.labels[at] != label {
            tape.labels[at] = label.to_owned();
            tape.labelled |= !label.is_empty();
            tape.digest = None; // labels are part of the structure
        }
        drop(tape);
        self
    }

    /// The node's forward value from the last `Client::backward` (NaN before).
    pub fn value(&self) -> f64 {
        self.graph.tape().values.get(self.id as usize).copied().unwrap_or(f64::NAN)
    }

    /// d(loss)/d(node) from the last `Client::backward` (NaN before).
    pub fn grad(&self) -> f64 {
        self.graph.tape().grads.get(self.id as usize).copied().unwrap_or(f64::NAN)
    }

    /// Applies a one-input op of the server's (e.g. a plugin's `gelu`).
    pub fn apply(&self, op: &str) -> Node {
        self.graph.apply(op, [self])
    }

    /// Applies a two-input op to this node and `other`.
    pub fn apply2(&self, op: &str, other: impl Operand) -> Node {
        let other = other.into_node(&self.graph);
        self.graph.apply(op, [self, &other])
    }

    /// self ** other.
    pub fn pow(&self, other: impl Operand) -> Node {
        self.apply2("pow", other)
    }

    /// The larger of self and other.
    pub fn max(&self, other: impl Operand) -> Node {
        self.apply2("max", other)
    }

    /// The smaller of self and other.
    pub fn min(&self, other: impl Operand) -> Node {
        self.apply2("min", other)
    }
}

/// The standard ops of one input (gradserve-ops-core); `ListOps` documents each one's
/// domain and derivative.
macro_rules! unary_ops {
    ($($name:ident),*) => {
        impl Node {
            $(
                #[doc = concat!("Adds `", stringify!($name), "(self)`.")]
                pub fn $name(&self) -> Node {
                    self.apply(stringify!($name))
                }
            )*
        }
    };
}
unary_ops!(exp, log, sqrt, tanh, sigmoid, softplus, relu, abs, sin, cos);

impl PartialEq for Node {
    /// The same node of the same graph.
    fn eq(&self, other: &Node) -> bool {
        self.id == other.id && self.graph == other.graph
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({})", self.id)
    }
}

/// What an op can take as an input: a node of the same graph, or an `f64` (a new constant).
pub trait Operand {
    /// The operand as a node of `graph`.
    fn into_node(self, graph: &Graph) -> Node;
}

impl Operand for Node {
    fn into_node(self, _: &Graph) -> Node {
        self
    }
}

impl Operand for &Node {
    fn into_node(self, _: &Graph) -> Node {
        self.clone()
    }
}

impl Operand for f64 {
    fn into_node(self, graph: &Graph) -> Node {
        graph.constant(self)
    }
}

/// `node op operand` for Node and &Node, and `f64 op node`.
macro_rules! binary_ops {
    ($($trait:ident $method:ident $op:literal),*) => {$(
        impl<R: Operand> $trait<R> for &Node {
            type Output = Node;
            fn $method(self, other: R) -> Node {
                self.apply2($op, other)
            }
        }
        impl<R: Operand> $trait<R> for Node {
            type Output = Node;
            fn $method(self, other: R) -> Node {
                self.apply2($op, other)
            }
        }
        impl $trait<&Node> for f64 {
            type Output = Node;
            fn $method(self, other: &Node) -> Node {
                other.graph.constant(self).apply2($op, other)
            }
        }
        impl $trait<Node> for f64 {
            type Output = Node;
            fn $method(self, other: Node) -> Node {
                self.$method(&other)
            }
        }
    )*};
}
binary_ops!(Add add "add", Sub sub "sub", Mul mul "mul", Div div "div");

impl Neg for &Node {
    type Output = Node;
    fn neg(self) -> Node {
        self.apply("neg")
    }
}

impl Neg for Node {
    type Output = Node;
    fn neg(self) -> Node {
        self.apply("neg")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_writes_the_columns_in_topological_order() {
        let g = Graph::new();
        let x = g.leaf(2.0).label("x");
        let y = (&x * &x + 1.0).tanh();
        let total = g.sum([&x, &y, &x]);
        let wire = g.to_proto();
        assert_eq!(wire.op_names, ["mul", "add", "tanh", "sum"]);
        assert_eq!(wire.node_ops, [0, 1, 0, 2, 3, 4]);
        assert_eq!(wire.input_counts, [0, 2, 0, 2, 1, 3]);
        assert_eq!(wire.input_ids, [0, 0, 1, 2, 3, 0, 4, 0]);
        assert_eq!(wire.leaf_values, [2.0, 1.0]);
        assert_eq!(wire.labels, ["x", "", "", "", "", ""]);
        assert_eq!((y.id(), total.id(), g.len(), g.leaf_count()), (4, 5, 6, 2));
        assert_eq!(g.leaves(), [x, g.node(2).unwrap()]);
    }

    #[test]
    fn labels_and_new_nodes_drop_the_digest_and_leaf_values_keep_it() {
        let g = Graph::new();
        let x = g.leaf(1.0);
        g.tape().digest = Some(vec![7; 16]);
        g.set_leaf(&x, 3.0);
        assert!(g.plan_digest().is_some());
        let x = x.label("x");
        assert!(g.plan_digest().is_none());
        g.tape().digest = Some(vec![7; 16]);
        let _ = -&x;
        assert!(g.plan_digest().is_none());
        assert_eq!(g.to_proto().leaf_values, [3.0]);
    }

    #[test]
    #[should_panic(expected = "belongs to another graph")]
    fn a_node_of_another_graph_is_refused() {
        let (a, b) = (Graph::new(), Graph::new());
        let _ = a.leaf(1.0) + b.leaf(2.0);
    }

    #[test]
    #[should_panic(expected = "not a leaf")]
    fn only_a_leaf_can_be_set() {
        let g = Graph::new();
        let x = g.leaf(1.0);
        g.set_leaf(&x.exp(), 2.0);
    }

    #[test]
    fn results_read_nan_before_a_call() {
        let g = Graph::new();
        assert!(g.leaf(1.0).grad().is_nan());
    }
}
