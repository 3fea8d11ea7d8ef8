package gradserve

import (
	"fmt"

	pb "github.com/gradserve/gradserve/client/go/gradservev1"
)

// Graph is a computation graph of scalar nodes, built in topological order: every method
// that adds a node returns it, and a node can only read nodes added before it, so a Graph
// is acyclic by construction. After Client.Backward, Value and Grad read the results.
//
// A Graph remembers the plan digest the server returned for its structure; until a node or
// label is added, later calls send only the leaf values and that digest (see Client).
// A Graph is not safe for concurrent use.
type Graph struct {
	opNames     []string
	opIndex     map[string]uint32 // op name -> its 1-based index in opNames
	nodeOps     []uint32
	inputCounts []uint32
	inputIDs    []uint32
	leafValues  []float64
	leafOf      map[uint32]int // leaf node id -> its position in leafValues
	labels      []string
	labelled    bool // some label is non-empty: send them

	digest []byte    // the server's plan digest for the current structure, or nil
	values []float64 // per node, from the last Backward
	grads  []float64
}

// Node is one node of a Graph. Its methods add op nodes that read it, micrograd-style:
// x.Mul(w).Add(b).Tanh().
type Node struct {
	g  *Graph
	ID uint32
}

// NewGraph returns an empty graph.
func NewGraph() *Graph {
	return &Graph{opIndex: map[string]uint32{}, leafOf: map[uint32]int{}}
}

// Len is the number of nodes.
func (g *Graph) Len() int { return len(g.nodeOps) }

// Leaves is the number of leaves (the length of one row of leaf values).
func (g *Graph) Leaves() int { return len(g.leafValues) }

// Leaf adds a leaf: a value the client gives (an input, a parameter).
func (g *Graph) Leaf(value float64) Node {
	g.leafOf[uint32(len(g.nodeOps))] = len(g.leafValues)
	g.leafValues = append(g.leafValues, value)
	return g.add(0, nil)
}

// Const adds a constant. On the wire a constant is a leaf; its gradient is computed too.
func (g *Graph) Const(value float64) Node { return g.Leaf(value) }

// Apply adds a node applying the op called name (any op the server lists, including ops
// from third-party plugins) to inputs, in order. Inputs must be nodes of this graph.
func (g *Graph) Apply(name string, inputs ...Node) Node {
	index, ok := g.opIndex[name]
	if !ok {
		g.opNames = append(g.opNames, name)
		index = uint32(len(g.opNames))
		g.opIndex[name] = index
	}
	ids := make([]uint32, len(inputs))
	for i, input := range inputs {
		if input.g != g {
			panic(fmt.Sprintf("gradserve: input %d of %q belongs to another graph", i, name))
		}
		ids[i] = input.ID
	}
	return g.add(index, ids)
}

// Sum adds x1 + x2 + ... + xn (the variadic op "sum").
func (g *Graph) Sum(inputs ...Node) Node { return g.Apply("sum", inputs...) }

func (g *Graph) add(op uint32, inputs []uint32) Node {
	g.digest = nil // the structure changed
	g.nodeOps = append(g.nodeOps, op)
	g.inputCounts = append(g.inputCounts, uint32(len(inputs)))
	g.inputIDs = append(g.inputIDs, inputs...)
	g.labels = append(g.labels, "")
	return Node{g, uint32(len(g.nodeOps) - 1)}
}

// SetLeaf changes a leaf's value; the structure (and its plan digest) stays.
func (g *Graph) SetLeaf(leaf Node, value float64) {
	position, ok := g.leafOf[leaf.ID]
	if !ok || leaf.g != g {
		panic(fmt.Sprintf("gradserve: node %d is not a leaf of this graph", leaf.ID))
	}
	g.leafValues[position] = value
}

// PlanDigest is the server's digest of the graph's current structure, which the next call
// sends instead of the structure; nil before the first call and after the structure changed.
func (g *Graph) PlanDigest() []byte { return g.digest }

// Value is the node's forward value from the last Client.Backward (NaN before).
func (g *Graph) Value(n Node) float64 { return at(g.values, n.ID) }

// Grad is d(loss)/d(node) from the last Client.Backward (NaN before).
func (g *Graph) Grad(n Node) float64 { return at(g.grads, n.ID) }

func at(xs []float64, i uint32) float64 {
	if int(i) >= len(xs) {
		return nan
	}
	return xs[i]
}

// Proto is the graph's wire form, with its current leaf values.
func (g *Graph) Proto() *pb.Graph {
	graph := &pb.Graph{
		OpNames:     g.opNames,
		NodeOps:     g.nodeOps,
		InputCounts: g.inputCounts,
		InputIds:    g.inputIDs,
		LeafValues:  g.leafValues,
	}
	if g.labelled {
		graph.Labels = g.labels
	}
	return graph
}

// Label names the node in error messages and drawings, and returns it.
func (n Node) Label(label string) Node {
	if n.g.labels[n.ID] != label {
		n.g.labels[n.ID] = label
		n.g.labelled = n.g.labelled || label != ""
		n.g.digest = nil // labels are part of the structure
	}
	return n
}

// Value is the node's forward value from the last Client.Backward.
func (n Node) Value() float64 { return n.g.Value(n) }

// Grad is d(loss)/d(node) from the last Client.Backward.
func (n Node) Grad() float64 { return n.g.Grad(n) }

// Graph is the graph the node belongs to.
func (n Node) Graph() *Graph { return n.g }

// The standard ops (gradserve-ops-core). ListOps documents each one's domain and
// derivative; Apply reaches any other op.

func (n Node) Add(o Node) Node { return n.g.Apply("add", n, o) }
func (n Node) Sub(o Node) Node { return n.g.Apply("sub", n, o) }
func (n Node) Mul(o Node) Node { return n.g.Apply("mul", n, o) }
func (n Node) Div(o Node) Node { return n.g.Apply("div", n, o) }
func (n Node) Pow(o Node) Node { return n.g.Apply("pow", n, o) }
func (n Node) Max(o Node) Node { return n.g.Apply("max", n, o) }
func (n Node) Min(o Node) Node { return n.g.Apply("min", n, o) }
func (n Node) Neg() Node       { return n.g.Apply("neg", n) }
func (n Node) Exp() Node       { return n.g.Apply("exp", n) }
func (n Node) Log() Node       { return n.g.Apply("log", n) }
func (n Node) Sqrt() Node      { return n.g.Apply("sqrt", n) }
func (n Node) Tanh() Node      { return n.g.Apply("tanh", n) }
func (n Node) Sigmoid() Node   { return n.g.Apply("sigmoid", n) }
func (n Node) Softplus() Node  { return n.g.Apply("softplus", n) }
func (n Node) Relu() Node      { return n.g.Apply("relu", n) }
func (n Node) Abs() Node       { return n.g.Apply("abs", n) }
func (n Node) Sin() Node       { return n.g.Apply("sin", n) }
func (n Node) Cos() Node       { return n.g.Apply("cos", n) }

// AddConst, MulConst and PowConst combine the node with a new constant leaf.
func (n Node) AddConst(c float64) Node { return n.Add(n.g.Const(c)) }
func (n Node) MulConst(c float64) Node { return n.Mul(n.g.Const(c)) }
func (n Node) PowConst(c float64) Node { return n.Pow(n.g.Const(c)) }
