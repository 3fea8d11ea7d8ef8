package com.gradserve.client;

import static com.gradserve.client.Near.near;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.rpc.QuotaFailure;
import com.gradserve.v1.EvaluateRequest;
import com.gradserve.v1.OpInfo;
import com.gradserve.v1.Selection;
import io.grpc.ChannelCredentials;
import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import java.net.ServerSocket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/**
 * The client against live servers ({@link Servers}): the conformance server (plaintext, a
 * bearer token), a TLS server, a mutual-TLS server with a token, and a server with a 1 MiB
 * memory budget. Expected numbers are closed forms, never the server's own output.
 */
class ClientTest {
  private static GradserveClient conformance(Recorder... recorders) {
    Servers.Served server = Servers.conformance();
    return GradserveClient.builder(server.target())
        .token(server.token())
        .timeout(Duration.ofMinutes(1))
        .intercept(recorders)
        .build();
  }

  private static GradserveClient.Builder mtls() {
    Servers.Certificates certs = Servers.certificates();
    return GradserveClient.builder(Servers.mtls().tlsTarget())
        .tls(certs.ca().toFile())
        .clientCertificate(certs.clientCert(), certs.clientKey());
  }

  @Test
  void backwardFillsValuesAndGradients() {
    Neuron neuron = new Neuron();
    try (GradserveClient client = conformance()) {
      client.backward(neuron.o);
    }
    near(Neuron.O, neuron.o.value(), "o");
    near(Neuron.N, neuron.n.value(), "n");
    near(-3 * Neuron.DN, neuron.x1.grad(), "do/dx1");
    near(2 * Neuron.DN, neuron.w1.grad(), "do/dw1");
    near(1 * Neuron.DN, neuron.x2.grad(), "do/dx2");
    near(0, neuron.w2.grad(), "do/dw2");
    near(Neuron.DN, neuron.b.grad(), "do/db");
    near(1, neuron.o.grad(), "do/do");
  }

  @Test
  void theStructureIsSentOnceAndResentWhenTheServerLacksIt() {
    Neuron neuron = new Neuron();
    neuron.o.label("o " + UUID.randomUUID()); // a structure that no server has seen yet
    Recorder recorder = new Recorder();
    try (GradserveClient client = conformance(recorder)) {
      Result first = client.evaluate(neuron.graph);
      assertEquals(16, first.planDigest().length);
      assertArrayEquals(first.planDigest(), neuron.graph.planDigest());
      neuron.graph.setLeaf(neuron.x1, 1); // a new value keeps the structure...
      Result second = client.evaluate(neuron.graph, Request.builder().nodes(neuron.o).build());
      near(Math.tanh(1 * -3 + Neuron.B), second.value(0, 0), "o at x1 = 1");
      EvaluateRequest sent = recorder.sent.get(1);
      assertEquals(0, sent.getGraph().getNodeOpsCount(), "the second call sent the structure");
      assertEquals(16, sent.getPlanDigest().size());
      assertEquals(5, sent.getGraph().getLeafValuesCount());
    }

    // Another server process never compiled this structure: it answers the digest with
    // NOT_FOUND, and the client sends the whole graph again.
    Recorder other = new Recorder();
    try (GradserveClient client = mtls().token(Servers.MTLS_TOKEN).intercept(other).build()) {
      StatusRuntimeException lacks =
          assertThrows(
              StatusRuntimeException.class,
              () -> client.stub().evaluate(Request.defaults().toProto(neuron.graph, false)),
              "the server should not hold the plan yet");
      assertEquals(Status.Code.NOT_FOUND, lacks.getStatus().getCode());
      other.sent.clear();
      Result third = client.evaluate(neuron.graph, Request.builder().nodes(neuron.o).build());
      near(Math.tanh(1 * -3 + Neuron.B), third.value(0, 0), "o on the other server");
      assertEquals(2, other.sent.size(), "the digest, then the whole graph");
      assertEquals(0, other.sent.get(0).getGraph().getNodeOpsCount());
      assertEquals(neuron.graph.size(), other.sent.get(1).getGraph().getNodeOpsCount());
      assertTrue(other.sent.get(1).getPlanDigest().isEmpty());
    }

    // Stream does the same on a third server, which lacks it too.
    Servers.Certificates certs = Servers.certificates();
    Recorder third = new Recorder();
    try (GradserveClient tls =
        GradserveClient.builder(Servers.tls().tlsTarget())
            .tls(certs.ca().toFile())
            .intercept(third)
            .build()) {
      List<Double> streamed = new ArrayList<>();
      tls.stream(
          neuron.graph,
          Request.builder().nodes(neuron.o).build(),
          chunk -> {
            for (double value : chunk.values()) {
              streamed.add(value);
            }
          });
      assertEquals(1, streamed.size());
      near(Math.tanh(1 * -3 + Neuron.B), streamed.get(0), "o streamed from a third server");
      assertEquals(2, third.sent.size(), "the digest, then the whole graph");
      assertEquals(neuron.graph.size(), third.sent.get(1).getGraph().getNodeOpsCount());
    }

    neuron.o.label("output"); // ...a label is structure: the next call sends the graph
    assertNull(neuron.graph.planDigest());
  }

  @Test
  void tlsTrustsTheGivenCaAndAMismatchIsExplainedInOneLine() throws Exception {
    Servers.Served server = Servers.tls();
    String target = server.tlsTarget();
    try (GradserveClient client =
        GradserveClient.builder(target).tls(Servers.certificates().ca().toFile()).build()) {
      List<OpInfo> ops = client.listOps();
      assertTrue(ops.stream().anyMatch(op -> op.getName().equals("tanh")), ops.toString());
    }
    ChannelCredentials own =
        TlsChannelCredentials.newBuilder()
            .trustManager(Servers.certificates().ca().toFile())
            .build();
    try (GradserveClient client = GradserveClient.builder(target).credentials(own).build()) {
      assertFalse(client.listOps().isEmpty());
    }
    try (GradserveClient plain = GradserveClient.builder(target).build()) {
      ServerUnavailableException error =
          assertThrows(ServerUnavailableException.class, plain::listOps);
      assertEquals(
          "the server at " + target + " expects TLS and this client connects in plaintext: "
              + "give the client the CA certificate that signed the server's",
          error.getMessage());
    }
    try (GradserveClient systemRoots = GradserveClient.builder(target).tls().build()) {
      ServerUnavailableException error =
          assertThrows(ServerUnavailableException.class, systemRoots::listOps);
      assertEquals(
          "the server at " + target + " presented a certificate this client does not trust: "
              + "give the client the CA certificate that signed it",
          error.getMessage());
    }
    String plaintext = "localhost:" + Servers.conformance().port();
    try (GradserveClient tlsToPlaintext =
        GradserveClient.builder(plaintext).tls(Servers.certificates().ca().toFile()).build()) {
      ServerUnavailableException error =
          assertThrows(ServerUnavailableException.class, tlsToPlaintext::listOps);
      assertEquals(
          "the server at " + plaintext + " speaks plaintext and this client connects with TLS: "
              + "connect without TLS, or start the server with --tls-cert and --tls-key",
          error.getMessage());
    }
  }

  @Test
  void mutualTlsNeedsTheClientCertificateAndTheToken() {
    Neuron neuron = new Neuron();
    try (GradserveClient client = mtls().token(Servers.MTLS_TOKEN).build()) {
      client.backward(neuron.o);
    }
    near(Neuron.O, neuron.o.value(), "o");
    try (GradserveClient noToken = mtls().build()) {
      AuthException refused =
          assertThrows(AuthException.class, () -> noToken.evaluate(neuron.graph));
      assertEquals(Status.Code.UNAUTHENTICATED, refused.code());
    }
    try (GradserveClient noCertificate =
        GradserveClient.builder(Servers.mtls().tlsTarget())
            .tls(Servers.certificates().ca().toFile())
            .token(Servers.MTLS_TOKEN)
            .build()) {
      AuthException refused =
          assertThrows(AuthException.class, () -> noCertificate.evaluate(neuron.graph));
      assertEquals(Status.Code.UNAVAILABLE, refused.code());
      assertEquals(
          "the server at " + Servers.mtls().tlsTarget() + " refused the TLS connection: it "
              + "requires a client certificate signed by a CA it trusts (mutual TLS): give the "
              + "client its certificate and key",
          refused.getMessage());
    }
  }

  @Test
  void aGraphErrorCarriesTheBadRequestFieldAndTheNode() {
    Graph g = new Graph();
    g.leaf(-1).label("x").log().label("log(x)");
    try (GradserveClient client = conformance()) {
      GraphException error = assertThrows(GraphException.class, () -> client.evaluate(g));
      assertEquals(Status.Code.INVALID_ARGUMENT, error.code());
      assertEquals(1, error.node().getAsInt());
      assertEquals("graph.leaf_values", error.field());
      assertEquals(1, error.fieldViolations().size());
      assertTrue(error.getMessage().startsWith("node 1 ('log(x)'): "), error.getMessage());
      assertTrue(error.quotaViolations().isEmpty());
    }
  }

  @Test
  void aCapacityErrorCarriesTheQuotaFailure() {
    Graph g = new Graph();
    Node node = g.leaf(1);
    for (int i = 0; i < 20_000; i++) {
      node = node.add(node);
    }
    try (GradserveClient client =
        GradserveClient.builder(Servers.smallBudget().target()).build()) {
      LimitException error = assertThrows(LimitException.class, () -> client.evaluate(g));
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, error.code());
      assertEquals(1, error.quotaViolations().size());
      assertEquals("max-memory-mb", error.quotaViolations().get(0).getSubject());
      assertTrue(error.serverMessage().contains("max-memory-mb = 1"), error.serverMessage());
      assertTrue(error.fieldViolations().isEmpty());
      assertEquals(error.serverMessage(), error.getMessage());
      assertTrue(error.getMessage().endsWith("a larger --max-memory-mb"), error.getMessage());
      QuotaFailure.Violation violation = error.quotaViolations().get(0);
      long limit = violation.getQuotaValue(); // the part of the 1 MiB budget left for calls
      assertTrue(limit > 0 && limit <= 1 << 20, "the limit " + limit);
      long estimate = Long.parseLong(violation.getQuotaDimensionsMap().get("estimate_bytes"));
      assertTrue(estimate > limit, "the estimate " + estimate + " is over the limit " + limit);
    }
  }

  @Test
  void aServerThatIsNotThereIsUnavailableAndSaysWhatToDo() throws Exception {
    int port;
    try (ServerSocket probe = new ServerSocket(0)) {
      port = probe.getLocalPort();
    }
    for (String target : List.of("127.0.0.1:" + port, "no-such-host.invalid:50051")) {
      try (GradserveClient client = GradserveClient.builder(target).build()) {
        ServerUnavailableException error =
            assertThrows(ServerUnavailableException.class, client::listOps);
        assertEquals(Status.Code.UNAVAILABLE, error.code());
        assertEquals(
            "no gradserve server answers at " + target + ": start one with `gradserve serve`, "
                + "or set GRADSERVE_TARGET",
            error.getMessage());
      }
    }
  }

  @Test
  void theClientTimeoutAppliesAndADeadlineWins() {
    Neuron neuron = new Neuron();
    Servers.Served server = Servers.conformance();
    try (GradserveClient shortTimeout =
        GradserveClient.builder(server.target())
            .token(server.token())
            .timeout(Duration.ofNanos(1))
            .build()) {
      DeadlineExceededException error =
          assertThrows(
              DeadlineExceededException.class, () -> shortTimeout.evaluate(neuron.graph));
      assertEquals(
          "the call took longer than its timeout of 0.000000001 s: pass a larger timeout, "
              + "or send a smaller graph",
          error.getMessage());
      Result result =
          shortTimeout.withDeadline(Deadline.after(1, TimeUnit.MINUTES)).evaluate(neuron.graph);
      near(Neuron.O, result.value(0, neuron.o.id()), "o within the given deadline");
      ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor();
      Context.CancellableContext scope =
          Context.current().withDeadlineAfter(1, TimeUnit.MINUTES, timer);
      try {
        Result inContext = scope.call(() -> shortTimeout.evaluate(neuron.graph));
        near(Neuron.O, inContext.value(0, neuron.o.id()), "o within the context's deadline");
      } catch (Exception unexpected) {
        throw new AssertionError(unexpected);
      } finally {
        scope.cancel(null);
        timer.shutdownNow();
      }
    }
  }

  @Test
  void aStreamHandlerExceptionStopsTheStreamAndIsRethrown() {
    Neuron neuron = new Neuron();
    IllegalStateException enough = new IllegalStateException("enough");
    int[] calls = {0};
    try (GradserveClient client = conformance()) {
      IllegalStateException thrown =
          assertThrows(
              IllegalStateException.class,
              () ->
                  client.stream(
                      neuron.graph,
                      Request.builder().chunkSize(2).build(),
                      chunk -> {
                        calls[0]++;
                        throw enough;
                      }));
      assertSame(enough, thrown);
      assertEquals(1, calls[0]);
      assertEquals(
          neuron.graph.size(),
          client.evaluate(neuron.graph).nodeIds().length,
          "the client still works");
    }
  }

  @Test
  void aStreamInACancelledContextEndsCancelled() {
    Graph g = new Graph();
    Node node = g.leaf(0.5);
    for (int i = 0; i < 1000; i++) {
      node = node.sin();
    }
    Context.CancellableContext scope = Context.current().withCancellation();
    int[] chunks = {0};
    try (GradserveClient client = conformance()) {
      assertThrows(
          CancelledException.class,
          () ->
              scope.run(
                  () ->
                      client.stream(
                          g,
                          Request.builder().chunkSize(10).build(),
                          chunk -> {
                            if (++chunks[0] == 2) {
                              scope.cancel(null);
                            }
                          })));
    }
    assertTrue(chunks[0] >= 2 && chunks[0] < 101, "chunks received: " + chunks[0]);
  }

  @Test
  void leafTangentsBringJvpsAndHvps() {
    Neuron neuron = new Neuron();
    try (GradserveClient client = conformance()) {
      // Along b: do/db = 1 - o^2, and b's gradient moves by d2o/db2 = -2 o (1 - o^2).
      Result result =
          client.evaluate(
              neuron.graph,
              Request.builder().nodes(neuron.o, neuron.b).leafTangents(0, 0, 0, 0, 1).build());
      near(Neuron.DN, result.valueTangent(0, 0), "value tangent of o");
      near(-2 * Neuron.O * Neuron.DN, result.gradTangent(0, 1), "gradient tangent of b");
    }
  }

  @Test
  void rowsEvaluateTheGraphAtEachRowOfLeafValues() {
    Graph g = new Graph();
    Node x = g.leaf(0).label("x");
    Node y = g.leaf(0).label("y");
    Node f = x.mul(y).add(x.sin());
    double[][] rows = {{1, 2}, {-0.5, 3}, {2, -1}};
    try (GradserveClient client = conformance()) {
      Result result =
          client.evaluate(g, Request.builder().rows(rows).nodes(f, x, y).outputs(f).build());
      assertEquals(3, result.rows());
      for (int r = 0; r < rows.length; r++) {
        double xv = rows[r][0];
        double yv = rows[r][1];
        near(xv * yv + Math.sin(xv), result.value(r, 0), "f at row " + r);
        near(yv + Math.cos(xv), result.grad(r, 1), "df/dx at row " + r);
        near(xv, result.grad(r, 2), "df/dy at row " + r);
      }
    }
  }

  @Test
  void selectionLeavesReturnsTheLeavesOnly() {
    Neuron neuron = new Neuron();
    try (GradserveClient client = conformance()) {
      Result result =
          client.evaluate(
              neuron.graph, Request.builder().selection(Selection.SELECTION_LEAVES).build());
      assertEquals(List.of(0, 1, 2, 3, 4), List.of(box(result.nodeIds())));
      near(-3 * Neuron.DN, result.grad(0, 0), "do/dx1");
    }
  }

  @Test
  void aClosedClientSaysSo() {
    GradserveClient client = conformance();
    client.close();
    IllegalStateException error = assertThrows(IllegalStateException.class, client::listOps);
    assertEquals("the client was closed; make a new client", error.getMessage());
  }

  @Test
  void listOpsDescribesEachOp() {
    try (GradserveClient client = conformance()) {
      List<OpInfo> ops = client.listOps();
      OpInfo sum = ops.stream().filter(op -> op.getName().equals("sum")).findFirst().orElseThrow();
      assertTrue(sum.getVariadic());
      assertFalse(sum.getDoc().isEmpty());
      assertTrue(ops.stream().anyMatch(op -> op.getName().equals("tanh")));
    }
  }

  private static Integer[] box(int[] ids) {
    Integer[] out = new Integer[ids.length];
    for (int i = 0; i < ids.length; i++) {
      out[i] = ids[i];
    }
    return out;
  }
}
