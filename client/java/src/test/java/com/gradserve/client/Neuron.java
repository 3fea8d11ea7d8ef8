package com.gradserve.client;

/** The notebook's neuron, o = tanh(x1*w1 + x2*w2 + b), and its closed-form derivatives. */
final class Neuron {
  static final double B = 6.8813735870195432;
  /** n = x1*w1 + x2*w2 + b at the neuron's leaf values. */
  static final double N = 2 * -3 + 0 * 1 + B;
  static final double O = Math.tanh(N);
  /** do/dn = 1 - tanh(n)^2. */
  static final double DN = 1 - O * O;

  final Graph graph = new Graph();
  final Node x1 = graph.leaf(2).label("x1");
  final Node x2 = graph.leaf(0).label("x2");
  final Node w1 = graph.leaf(-3).label("w1");
  final Node w2 = graph.leaf(1).label("w2");
  final Node b = graph.leaf(B).label("b");
  final Node n = x1.mul(w1).add(x2.mul(w2)).add(b).label("n");
  final Node o = n.tanh().label("o");
}
