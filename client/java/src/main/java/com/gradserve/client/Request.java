package com.gradserve.client;

import com.gradserve.v1.Selection;
import java.util.List;

/**
 * What to evaluate. {@code Request.builder().build()} differentiates the graph's last node and
 * returns every node's results. Immutable; build one with {@link #builder()}.
 */
public final class Request {
  private final List<Node> outputs;
  private final double[] seeds;
  private final Selection selection;
  private final List<Node> nodes;
  private final double[][] rows;
  private final boolean allowNonFinite;
  private final int chunkSize;
  private final double[] leafTangents;

  private Request(Builder builder) {
    outputs = List.copyOf(builder.outputs);
    seeds = builder.seeds.clone();
    selection = builder.selection;
    nodes = List.copyOf(builder.nodes);
    rows = new double[builder.rows.length][];
    for (int r = 0; r < rows.length; r++) {
      rows[r] = builder.rows[r].clone();
    }
    allowNonFinite = builder.allowNonFinite;
    chunkSize = builder.chunkSize;
    leafTangents = builder.leafTangents.clone();
  }

  /** A builder whose defaults are those of the wire protocol. */
  public static Builder builder() {
    return new Builder();
  }

  /** The request that evaluates the last node and returns every node's results. */
  public static Request defaults() {
    return new Builder().build();
  }

  /** The wire form for {@code graph}: the whole graph, or its plan digest and leaf values. */
  com.gradserve.v1.EvaluateRequest toProto(Graph graph, boolean withStructure) {
    if (graph.size() == 0) {
      throw new IllegalArgumentException("the graph is empty");
    }
    for (double[] row : rows) {
      if (row.length != graph.leaves()) {
        throw new IllegalArgumentException(
            "a row has " + row.length + " values; the graph has " + graph.leaves() + " leaves");
      }
    }
    com.gradserve.v1.EvaluateRequest.Builder request =
        com.gradserve.v1.EvaluateRequest.newBuilder()
            .setSelection(selection)
            .setAllowNonFinite(allowNonFinite)
            .setChunkSize(chunkSize);
    for (Node output : outputs) {
      request.addOutputs(idIn(graph, output));
    }
    for (double seed : seeds) {
      request.addSeeds(seed);
    }
    for (Node node : nodes) {
      request.addNodes(idIn(graph, node));
    }
    for (double tangent : leafTangents) {
      request.addLeafTangents(tangent);
    }
    if (rows.length > 0) {
      request.setRows(rows.length);
    }
    byte[] digest = graph.planDigest();
    com.gradserve.v1.Graph.Builder wire;
    if (digest != null && !withStructure) {
      wire = com.gradserve.v1.Graph.newBuilder();
      request.setPlanDigest(com.google.protobuf.ByteString.copyFrom(digest));
    } else {
      wire = graph.structure();
    }
    if (rows.length == 0) {
      for (double value : graph.leafValues()) {
        wire.addLeafValues(value);
      }
    } else {
      for (double[] row : rows) {
        for (double value : row) {
          wire.addLeafValues(value);
        }
      }
    }
    return request.setGraph(wire).build();
  }

  private static int idIn(Graph graph, Node node) {
    if (node.graph() != graph) {
      throw new IllegalArgumentException("a requested " + node + " belongs to another graph");
    }
    return node.id();
  }

  /** Builds a {@link Request}. */
  public static final class Builder {
    private List<Node> outputs = List.of();
    private double[] seeds = new double[0];
    private Selection selection = Selection.SELECTION_UNSPECIFIED;
    private List<Node> nodes = List.of();
    private double[][] rows = new double[0][];
    private boolean allowNonFinite;
    private int chunkSize;
    private double[] leafTangents = new double[0];

    private Builder() {}

    /** The outputs that seed the backward pass (default: the graph's last node). */
    public Builder outputs(Node... outputs) {
      this.outputs = List.of(outputs);
      return this;
    }

    /** The outputs' seed gradients, one per output (default 1 each). */
    public Builder seeds(double... seeds) {
      this.seeds = seeds.clone();
      return this;
    }

    /** Which results come back (default: {@link #nodes} if given, else every node). */
    public Builder selection(Selection selection) {
      this.selection = selection;
      return this;
    }

    /** The nodes whose results come back, in this order (they may repeat). */
    public Builder nodes(Node... nodes) {
      this.nodes = List.of(nodes);
      return this;
    }

    /**
     * Evaluates the graph at {@code rows.length} rows of leaf values at once (one value per
     * leaf each, in leaf order) instead of the graph's own leaf values.
     */
    public Builder rows(double[]... rows) {
      this.rows = rows.clone();
      return this;
    }

    /** Lets NaN and Inf through instead of failing the call. */
    public Builder allowNonFinite(boolean allow) {
      this.allowNonFinite = allow;
      return this;
    }

    /** The most nodes per chunk of {@link GradserveClient#stream} (0: the server's default). */
    public Builder chunkSize(int chunkSize) {
      if (chunkSize < 0) {
        throw new IllegalArgumentException("chunkSize must be at least 0, not " + chunkSize);
      }
      this.chunkSize = chunkSize;
      return this;
    }

    /**
     * A direction for the leaves, laid out like their values (one per leaf, row by row with
     * {@link #rows}): the results then carry value tangents (Jacobian-vector products) and
     * gradient tangents (for the leaves, Hessian-vector products). See the .proto.
     */
    public Builder leafTangents(double... tangents) {
      this.leafTangents = tangents.clone();
      return this;
    }

    public Request build() {
      return new Request(this);
    }
  }
}
