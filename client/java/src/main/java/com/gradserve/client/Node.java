package com.gradserve.client;

/**
 * One node of a {@link Graph}. Its methods add op nodes that read it, micrograd-style: {@code
 * x.mul(w).add(b).tanh()}. The standard ops (gradserve-ops-core) have methods; {@link
 * Graph#apply} reaches any other op. {@link GradserveClient#listOps} documents each op's domain
 * and derivative.
 */
public final class Node {
  private final Graph graph;
  private final int id;

  Node(Graph graph, int id) {
    this.graph = graph;
    this.id = id;
  }

  /** The node's id: its position in the graph. */
  public int id() {
    return id;
  }

  /** The graph the node belongs to. */
  public Graph graph() {
    return graph;
  }

  /** Names the node in error messages and drawings; returns the node. */
  public Node label(String label) {
    graph.label(this, label);
    return this;
  }

  /** The forward value from the last {@link GradserveClient#backward} (NaN before). */
  public double value() {
    return graph.value(id);
  }

  /** d(loss)/d(node) from the last {@link GradserveClient#backward} (NaN before). */
  public double grad() {
    return graph.grad(id);
  }

  public Node add(Node other) {
    return graph.apply("add", this, other);
  }

  public Node sub(Node other) {
    return graph.apply("sub", this, other);
  }

  public Node mul(Node other) {
    return graph.apply("mul", this, other);
  }

  public Node div(Node other) {
    return graph.apply("div", this, other);
  }

  public Node pow(Node other) {
    return graph.apply("pow", this, other);
  }

  public Node max(Node other) {
    return graph.apply("max", this, other);
  }

  public Node min(Node other) {
    return graph.apply("min", this, other);
  }

  /** The node plus a new constant leaf. */
  public Node add(double constant) {
    return add(graph.constant(constant));
  }

  /** The node times a new constant leaf. */
  public Node mul(double constant) {
    return mul(graph.constant(constant));
  }

  /** The node to the power of a new constant leaf. */
  public Node pow(double constant) {
    return pow(graph.constant(constant));
  }

  public Node neg() {
    return graph.apply("neg", this);
  }

  public Node exp() {
    return graph.apply("exp", this);
  }

  public Node log() {
    return graph.apply("log", this);
  }

  public Node sqrt() {
    return graph.apply("sqrt", this);
  }

  public Node tanh() {
    return graph.apply("tanh", this);
  }

  public Node sigmoid() {
    return graph.apply("sigmoid", this);
  }

  public Node softplus() {
    return graph.apply("softplus", this);
  }

  public Node relu() {
    return graph.apply("relu", this);
  }

  public Node abs() {
    return graph.apply("abs", this);
  }

  public Node sin() {
    return graph.apply("sin", this);
  }

  public Node cos() {
    return graph.apply("cos", this);
  }

  @Override
  public boolean equals(Object other) {
    return other instanceof Node node && node.graph == graph && node.id == id;
  }

  @Override
  public int hashCode() {
    return System.identityHashCode(graph) * 31 + id;
  }

  @Override
  public String toString() {
    String label = graph.labelOf(this);
    return label.isEmpty() ? "node " + id : "node " + id + " ('" + label + "')";
  }
}
