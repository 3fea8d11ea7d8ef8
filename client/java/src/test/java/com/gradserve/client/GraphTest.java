package com.gradserve.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.gradserve.v1.EvaluateRequest;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The graph builder and the wire form of requests, without a server. */
class GraphTest {
  @Test
  void theWireFormIsColumnarWithEachOpListedOnce() {
    Graph g = new Graph();
    Node a = g.leaf(1);
    Node b = g.leaf(2);
    Node c = a.mul(b);
    c.add(a).mul(c);
    com.gradserve.v1.Graph wire = g.toProto();
    assertEquals(List.of("mul", "add"), wire.getOpNamesList());
    assertEquals(List.of(0, 0, 1, 2, 1), wire.getNodeOpsList());
    assertEquals(List.of(0, 0, 2, 2, 2), wire.getInputCountsList());
    assertEquals(List.of(0, 1, 2, 0, 3, 2), wire.getInputIdsList());
    assertEquals(0, wire.getLabelsCount(), "no labels are sent when no node has one");
    assertEquals(List.of(1.0, 2.0), wire.getLeafValuesList());
    assertEquals(2, g.leaves());
    assertEquals(5, g.size());
  }

  @Test
  void labelsAreSentForEveryNodeOnceOneHasOne() {
    Graph g = new Graph();
    Node x = g.leaf(1);
    x.exp().label("e");
    assertEquals(List.of("", "e"), g.toProto().getLabelsList());
    assertEquals("node 1 ('e')", new Node(g, 1).toString());
  }

  @Test
  void aRequestCarriesTheLeafValuesOrTheRowsRowByRow() {
    Graph g = new Graph();
    Node x = g.leaf(1);
    Node y = g.leaf(2);
    Node z = x.mul(y);
    EvaluateRequest one = Request.builder().nodes(z, x).build().toProto(g, true);
    assertEquals(List.of(1.0, 2.0), one.getGraph().getLeafValuesList());
    assertEquals(List.of(2, 0), one.getNodesList());
    assertEquals(0, one.getRows());
    EvaluateRequest rows =
        Request.builder().rows(new double[] {3, 4}, new double[] {5, 6}).build().toProto(g, true);
    assertEquals(List.of(3.0, 4.0, 5.0, 6.0), rows.getGraph().getLeafValuesList());
    assertEquals(2, rows.getRows());
    IllegalArgumentException wrong =
        assertThrows(
            IllegalArgumentException.class,
            () -> Request.builder().rows(new double[] {1}).build().toProto(g, true));
    assertEquals("a row has 1 values; the graph has 2 leaves", wrong.getMessage());
  }

  @Test
  void setLeafChangesTheValueAndKeepsTheDigestWhileALabelOrANodeDropsIt() {
    Graph g = new Graph();
    Node x = g.leaf(1);
    Node y = x.sin();
    byte[] digest = new byte[16];
    digest[0] = 7;
    g.rememberDigest(digest);
    g.setLeaf(x, 0.5);
    assertEquals(0.5, g.leafValue(x));
    assertArrayEquals(digest, g.planDigest());
    EvaluateRequest byDigest = Request.defaults().toProto(g, false);
    assertEquals(16, byDigest.getPlanDigest().size());
    assertEquals(0, byDigest.getGraph().getNodeOpsCount(), "a digest replaces the structure");
    assertEquals(List.of(0.5), byDigest.getGraph().getLeafValuesList());
    y.label("y");
    assertNull(g.planDigest(), "a label is structure");
    g.rememberDigest(digest);
    y.label("y");
    assertArrayEquals(digest, g.planDigest(), "the same label again changes nothing");
    y.cos();
    assertNull(g.planDigest(), "a new node is structure");
  }

  @Test
  void nodesOfAnotherGraphAndNonLeavesAreRefused() {
    Graph g = new Graph();
    Graph other = new Graph();
    Node x = g.leaf(1);
    Node stranger = other.leaf(2);
    assertThrows(IllegalArgumentException.class, () -> x.add(stranger));
    assertThrows(IllegalArgumentException.class, () -> g.setLeaf(x.exp(), 1));
    assertThrows(IllegalArgumentException.class, () -> g.setLeaf(stranger, 1));
    assertFalse(g.isLeaf(stranger));
    assertTrue(g.isLeaf(x));
    assertThrows(
        IllegalArgumentException.class,
        () -> Request.builder().nodes(stranger).build().toProto(g, true));
    assertThrows(
        IllegalArgumentException.class, () -> Request.defaults().toProto(new Graph(), true));
  }

  @Test
  void valuesAndGradientsAreNaNBeforeBackward() {
    Node x = new Graph().leaf(3);
    assertTrue(Double.isNaN(x.value()));
    assertTrue(Double.isNaN(x.grad()));
  }

  @Test
  void aMillionNodeChainIsBuiltWithoutRecursion() {
    Graph g = new Graph();
    Node node = g.leaf(0.5);
    for (int i = 0; i < 1_000_000; i++) {
      node = node.sin();
    }
    com.gradserve.v1.Graph wire = g.toProto();
    assertEquals(1_000_001, wire.getNodeOpsCount());
    assertEquals(999_999, wire.getInputIds(1_000_000 - 1));
  }
}
