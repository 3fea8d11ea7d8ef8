package com.gradserve.client;

import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A computation graph of scalar nodes, built in topological order: every method that adds a
 * node returns it, and a node can only read nodes added before it, so a graph is acyclic by
 * construction. After {@link GradserveClient#backward}, {@link Node#value()} and {@link
 * Node#grad()} read the results.
 *
 * <p>A graph remembers the plan digest the server returned for its structure; until a node or
 * a label is added, later calls send only the leaf values and that digest (see {@link
 * GradserveClient}). A graph is not safe for concurrent use.
 */
public final class Graph {
  private final Map<String, Integer> opIndex = new LinkedHashMap<>(); // name -> 1-based index
  private final Growable.Ints nodeOps = new Growable.Ints();
  private final Growable.Ints inputCounts = new Growable.Ints();
  private final Growable.Ints inputIds = new Growable.Ints();
  private final Growable.Doubles leafValues = new Growable.Doubles();
  private final Growable.Ints leafPosition = new Growable.Ints(); // per node; -1: an op node
  private final Map<Integer, String> labels = new HashMap<>(); // only the non-empty ones

  private byte[] digest; // the server's plan digest for the current structure, or null
  private double[] values; // per node, from the last backward
  private double[] grads;

  /** The number of nodes. */
  public int size() {
    return nodeOps.size();
  }

  /** The number of leaves: the length of one row of leaf values. */
  public int leaves() {
    return leafValues.size();
  }

  /** Adds a leaf: a value the client gives (an input, a parameter). */
  public Node leaf(double value) {
    leafPosition.add(leafValues.size());
    leafValues.add(value);
    return add(0, new Node[0], "leaf");
  }

  /** Adds a constant. On the wire a constant is a leaf; its gradient is computed too. */
  public Node constant(double value) {
    return leaf(value);
  }

  /**
   * Adds a node applying the op called {@code name} (any op the server lists, including ops
   * from third-party plugins) to {@code inputs}, in order. Inputs must be nodes of this graph.
   */
  public Node apply(String name, Node... inputs) {
    Integer index = opIndex.get(name);
    if (index == null) {
      index = opIndex.size() + 1;
      opIndex.put(name, index);
    }
    leafPosition.add(-1);
    return add(index, inputs, name);
  }

  /** Adds x1 + x2 + ... + xn (the variadic op "sum"). */
  public Node sum(Node... inputs) {
    return apply("sum", inputs);
  }

  private Node add(int op, Node[] inputs, String name) {
    for (int i = 0; i < inputs.length; i++) {
      if (inputs[i].graph() != this) {
        throw new IllegalArgumentException(
            "input " + i + " of '" + name + "' belongs to another graph");
      }
    }
    digest = null; // the structure changed
    nodeOps.add(op);
    inputCounts.add(inputs.length);
    for (Node input : inputs) {
      inputIds.add(input.id());
    }
    return new Node(this, nodeOps.size() - 1);
  }

  /** Changes a leaf's value; the structure (and its plan digest) stays. */
  public void setLeaf(Node leaf, double value) {
    leafValues.set(positionOf(leaf), value);
  }

  /** The leaf's current value. */
  public double leafValue(Node leaf) {
    return leafValues.get(positionOf(leaf));
  }

  /** Whether the node is a leaf (or a constant). */
  public boolean isLeaf(Node node) {
    return node.graph() == this && leafPosition.get(node.id()) >= 0;
  }

  private int positionOf(Node leaf) {
    if (!isLeaf(leaf)) {
      throw new IllegalArgumentException("node " + leaf.id() + " is not a leaf of this graph");
    }
    return leafPosition.get(leaf.id());
  }

  void label(Node node, String label) {
    String text = label == null ? "" : label;
    if (!text.equals(labels.getOrDefault(node.id(), ""))) {
      if (text.isEmpty()) {
        labels.remove(node.id());
      } else {
        labels.put(node.id(), text);
      }
      digest = null; // labels are part of the structure
    }
  }

  /** The node's label ("" when it has none). */
  public String labelOf(Node node) {
    return labels.getOrDefault(node.id(), "");
  }

  /**
   * The server's digest of the graph's current structure, which the next call sends instead
   * of the structure; null before the first call and after the structure changed.
   */
  public byte[] planDigest() {
    return digest == null ? null : digest.clone();
  }

  void rememberDigest(byte[] planDigest) {
    digest = planDigest.length > 0 ? planDigest.clone() : null;
  }

  void forgetDigest() {
    digest = null;
  }

  /** The graph's wire form, with its current leaf values. */
  public com.gradserve.v1.Graph toProto() {
    com.gradserve.v1.Graph.Builder graph = structure();
    for (int i = 0; i < leafValues.size(); i++) {
      graph.addLeafValues(leafValues.get(i));
    }
    return graph.build();
  }

  /** The graph's wire form without leaf values: what its plan digest stands for. */
  com.gradserve.v1.Graph.Builder structure() {
    com.gradserve.v1.Graph.Builder graph = com.gradserve.v1.Graph.newBuilder();
    graph.addAllOpNames(opIndex.keySet());
    for (int i = 0; i < nodeOps.size(); i++) {
      graph.addNodeOps(nodeOps.get(i));
      graph.addInputCounts(inputCounts.get(i));
    }
    for (int i = 0; i < inputIds.size(); i++) {
      graph.addInputIds(inputIds.get(i));
    }
    if (!labels.isEmpty()) {
      for (int i = 0; i < nodeOps.size(); i++) {
        graph.addLabels(labels.getOrDefault(i, ""));
      }
    }
    return graph;
  }

  /** The leaf values: one row, in leaf order. */
  double[] leafValues() {
    return leafValues.toArray();
  }

  void keepResults(double[] nodeValues, double[] nodeGrads) {
    values = nodeValues;
    grads = nodeGrads;
  }

  double value(int id) {
    return values == null || id >= values.length ? Double.NaN : values[id];
  }

  double grad(int id) {
    return grads == null || id >= grads.length ? Double.NaN : grads[id];
  }
}
