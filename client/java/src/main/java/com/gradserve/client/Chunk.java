package com.gradserve.client;

/**
 * One message of {@link GradserveClient#stream}: a {@link Result} for the next part of the
 * selection, the size of the whole selection, and the first row it holds.
 */
public final class Chunk extends Result {
  private final long totalNodes;
  private final int firstRow;

  private Chunk(com.gradserve.v1.GradientChunk chunk) {
    super(
        ints(chunk.getNodeIdsCount(), chunk::getNodeIds),
        doubles(chunk.getValuesCount(), chunk::getValues),
        doubles(chunk.getGradsCount(), chunk::getGrads),
        chunk.getRows(),
        chunk.getPlanDigest().toByteArray(),
        doubles(chunk.getValueTangentsCount(), chunk::getValueTangents),
        doubles(chunk.getGradTangentsCount(), chunk::getGradTangents));
    totalNodes = chunk.getTotalNodes();
    firstRow = chunk.getFirstRow();
  }

  static Chunk of(com.gradserve.v1.GradientChunk chunk) {
    return new Chunk(chunk);
  }

  /** The number of selected nodes across the whole stream. */
  public long totalNodes() {
    return totalNodes;
  }

  /** The request's row that this chunk's first row is (0 unless rows came in blocks). */
  public int firstRow() {
    return firstRow;
  }
}
