package com.gradserve.client;

import java.util.function.IntToDoubleFunction;
import java.util.function.IntUnaryOperator;

/**
 * The selected nodes' values and gradients, row by row: {@code values()[r * nodeIds().length +
 * j]} is node {@code nodeIds()[j]} at row {@code r}. With {@link Request.Builder#leafTangents}
 * it also holds their value and gradient tangents, laid out the same way.
 */
public class Result {
  private final int[] nodeIds;
  private final double[] values;
  private final double[] grads;
  private final int rows;
  private final byte[] planDigest;
  private final double[] valueTangents;
  private final double[] gradTangents;

  Result(
      int[] nodeIds,
      double[] values,
      double[] grads,
      int rows,
      byte[] planDigest,
      double[] valueTangents,
      double[] gradTangents) {
    this.nodeIds = nodeIds;
    this.values = values;
    this.grads = grads;
    this.rows = rows;
    this.planDigest = planDigest;
    this.valueTangents = valueTangents;
    this.gradTangents = gradTangents;
  }

  static Result of(com.gradserve.v1.EvaluateResponse response) {
    return new Result(
        ints(response.getNodeIdsCount(), response::getNodeIds),
        doubles(response.getValuesCount(), response::getValues),
        doubles(response.getGradsCount(), response::getGrads),
        response.getRows(),
        response.getPlanDigest().toByteArray(),
        doubles(response.getValueTangentsCount(), response::getValueTangents),
        doubles(response.getGradTangentsCount(), response::getGradTangents));
  }

  /** A repeated field's entries, read without boxing. */
  static int[] ints(int count, IntUnaryOperator entry) {
    int[] out = new int[count];
    for (int i = 0; i < count; i++) {
      out[i] = entry.applyAsInt(i);
    }
    return out;
  }

  static double[] doubles(int count, IntToDoubleFunction entry) {
    double[] out = new double[count];
    for (int i = 0; i < count; i++) {
      out[i] = entry.applyAsDouble(i);
    }
    return out;
  }

  // Without copies, for the client's own use (Backward reads a million-node result once).
  int[] rawNodeIds() {
    return nodeIds;
  }

  double[] rawValues() {
    return values;
  }

  double[] rawGrads() {
    return grads;
  }

  /** The ids of the selected nodes, in selection order. */
  public int[] nodeIds() {
    return nodeIds.clone();
  }

  /** Every value, row by row. */
  public double[] values() {
    return values.clone();
  }

  /** Every gradient, row by row. */
  public double[] grads() {
    return grads.clone();
  }

  /** The number of rows of results. */
  public int rows() {
    return rows;
  }

  /** The server's 16-byte digest of the graph's structure. */
  public byte[] planDigest() {
    return planDigest.clone();
  }

  /** The value tangents (Jacobian-vector products), laid out as the values; empty without. */
  public double[] valueTangents() {
    return valueTangents.clone();
  }

  /** The gradient tangents (Hessian-vector products for leaves), laid out as the grads. */
  public double[] gradTangents() {
    return gradTangents.clone();
  }

  /** The value of the {@code j}-th selected node at {@code row}. */
  public double value(int row, int j) {
    return values[row * nodeIds.length + j];
  }

  /** The gradient of the {@code j}-th selected node at {@code row}. */
  public double grad(int row, int j) {
    return grads[row * nodeIds.length + j];
  }

  /** The value tangent of the {@code j}-th selected node at {@code row}. */
  public double valueTangent(int row, int j) {
    return valueTangents[row * nodeIds.length + j];
  }

  /** The gradient tangent of the {@code j}-th selected node at {@code row}. */
  public double gradTangent(int row, int j) {
    return gradTangents[row * nodeIds.length + j];
  }
}
