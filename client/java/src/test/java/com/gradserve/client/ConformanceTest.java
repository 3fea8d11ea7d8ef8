package com.gradserve.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.gradserve.v1.EvaluateRequest;
import com.gradserve.v1.OpInfo;
import com.gradserve.v1.Selection;
import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.net.ServerSocket;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.TestFactory;

/**
 * The conformance suite (conformance/cases.json, format in conformance/README.md) through this
 * client: one test per case. Graphs are built with the builder, calls made with evaluate and
 * stream, errors read as {@link GradserveException}. Graphs given as raw columns, and explicit
 * plan digests, go through the generated stub ({@link GradserveClient#stub}).
 */
class ConformanceTest {
  @TestFactory
  Stream<DynamicTest> cases() {
    JsonObject suite = Servers.suite();
    JsonObject tolerance = suite.getAsJsonObject("tolerance");
    double absolute = tolerance.get("absolute").getAsDouble();
    double relative = tolerance.get("relative").getAsDouble();
    List<DynamicTest> tests = new ArrayList<>();
    for (JsonElement element : suite.getAsJsonArray("cases")) {
      JsonObject spec = element.getAsJsonObject();
      tests.add(
          DynamicTest.dynamicTest(
              spec.get("name").getAsString(),
              () -> new Case(spec, absolute, relative).run()));
    }
    return tests.stream();
  }

  /** One case: its graph, built once, then its calls in order. */
  private static final class Case {
    private final JsonObject spec;
    private final double absolute;
    private final double relative;
    private final Servers.Served server = Servers.conformance();
    private Graph graph;
    private final List<Node> nodes = new ArrayList<>();
    private final List<Node> leaves = new ArrayList<>();
    private com.gradserve.v1.Graph raw;

    Case(JsonObject spec, double absolute, double relative) {
      this.spec = spec;
      this.absolute = absolute;
      this.relative = relative;
    }

    void run() throws Exception {
      if (spec.has("graph")) {
        build(spec.getAsJsonObject("graph"));
      }
      try (GradserveClient client =
          GradserveClient.builder(server.target()).token(server.token()).build()) {
        for (JsonElement call : spec.getAsJsonArray("calls")) {
          call(client, call.getAsJsonObject());
        }
      }
    }

    private void build(JsonObject spec) {
      if (spec.has("raw")) {
        JsonObject columns = spec.getAsJsonObject("raw");
        com.gradserve.v1.Graph.Builder wire = com.gradserve.v1.Graph.newBuilder();
        strings(columns, "op_names").forEach(wire::addOpNames);
        ints(columns, "node_ops").forEach(wire::addNodeOps);
        ints(columns, "input_counts").forEach(wire::addInputCounts);
        ints(columns, "input_ids").forEach(wire::addInputIds);
        doubles(columns, "leaf_values").forEach(wire::addLeafValues);
        strings(columns, "labels").forEach(wire::addLabels);
        raw = wire.build();
        return;
      }
      graph = new Graph();
      if (!spec.has("chain")) {
        spec.getAsJsonArray("nodes").forEach(node -> add(node.getAsJsonObject()));
        return;
      }
      JsonObject chain = spec.getAsJsonObject("chain");
      chain.getAsJsonArray("leaves").forEach(node -> add(node.getAsJsonObject()));
      int repeat = chain.get("repeat").getAsInt();
      JsonArray steps = chain.getAsJsonArray("steps");
      for (int i = 0; i < repeat; i++) {
        steps.forEach(node -> add(node.getAsJsonObject()));
      }
    }

    private void add(JsonObject spec) {
      String label = spec.has("label") ? spec.get("label").getAsString() : "";
      if (spec.has("leaf")) {
        Node leaf = graph.leaf(spec.get("leaf").getAsDouble()).label(label);
        nodes.add(leaf);
        leaves.add(leaf);
        return;
      }
      List<Node> inputs = new ArrayList<>();
      for (int id : ints(spec, "inputs")) {
        inputs.add(nodes.get(id < 0 ? id + nodes.size() : id));
      }
      String op = spec.get("op").getAsString();
      nodes.add(graph.apply(op, inputs.toArray(Node[]::new)).label(label));
    }

    private void call(GradserveClient shared, JsonObject call) throws Exception {
      String rpc = call.get("rpc").getAsString();
      JsonObject request = call.getAsJsonObject("request");
      JsonObject expect = call.getAsJsonObject("expect");
      GradserveClient client = shared;
      List<GradserveClient> opened = new ArrayList<>();
      if (request.has("token")) {
        String token = request.get("token").getAsString();
        GradserveClient.Builder builder = GradserveClient.builder(server.target());
        client = (token.isEmpty() ? builder : builder.token(token)).build();
        opened.add(client);
      }
      if (request.has("target") && request.get("target").getAsString().equals("unreachable")) {
        client = GradserveClient.builder(unusedTarget()).token(server.token()).build();
        opened.add(client);
      }
      if (request.has("deadline_ms")) {
        client =
            client.withDeadline(
                Deadline.after(request.get("deadline_ms").getAsLong(), TimeUnit.MILLISECONDS));
      }
      try {
        if (rpc.equals("ListOps")) {
          checkOps(client.listOps(), expect);
          return;
        }
        Outcome outcome;
        try {
          outcome = evaluate(client, rpc, request);
        } catch (GradserveException error) {
          checkError(error, expect);
          return;
        }
        checkResult(outcome, expect);
      } finally {
        opened.forEach(GradserveClient::close);
      }
    }

    /** The call's results gathered in one place, and how many messages brought them. */
    private record Outcome(List<Integer> ids, List<Double> values, List<Double> grads,
        int rows, byte[] digest, int chunks) {}

    private Outcome evaluate(GradserveClient client, String rpc, JsonObject request) {
      if (raw != null || request.has("plan_digest")) {
        return rawCall(client, rpc, request);
      }
      Request wanted = request(request);
      if (rpc.equals("Evaluate")) {
        Result result = client.evaluate(graph, wanted);
        return new Outcome(list(result.nodeIds()), list(result.values()), list(result.grads()),
            result.rows(), result.planDigest(), 1);
      }
      List<Integer> ids = new ArrayList<>();
      List<Double> values = new ArrayList<>();
      List<Double> grads = new ArrayList<>();
      int[] chunks = {0, 0};
      byte[][] digest = {new byte[0]};
      int cancelAfter = request.has("cancel_after_chunks")
          ? request.get("cancel_after_chunks").getAsInt() : 0;
      Context.CancellableContext scope = Context.current().withCancellation();
      try {
        scope.run(
            () ->
                client.stream(
                    graph,
                    wanted,
                    chunk -> {
                      chunks[0]++;
                      assertTrue(chunk.totalNodes() > 0, "a chunk without total_nodes");
                      ids.addAll(list(chunk.nodeIds()));
                      values.addAll(list(chunk.values()));
                      grads.addAll(list(chunk.grads()));
                      chunks[1] = chunk.rows();
                      digest[0] = chunk.planDigest();
                      if (chunks[0] == cancelAfter) {
                        scope.cancel(null);
                      }
                    }));
      } finally {
        scope.cancel(null);
      }
      return new Outcome(ids, values, grads, chunks[1], digest[0], chunks[0]);
    }

    /** The case's request through the builder: plan "previous" reuses the graph's digest. */
    private Request request(JsonObject spec) {
      if (spec.has("plan") && spec.get("plan").getAsString().equals("previous")) {
        assertNotNull(graph.planDigest(), "the graph has no plan digest to reuse");
      }
      if (spec.has("leaf_values")) {
        List<Double> values = doubles(spec, "leaf_values");
        for (int i = 0; i < values.size(); i++) {
          graph.setLeaf(leaves.get(i), values.get(i));
        }
      }
      Request.Builder request = Request.builder()
          .outputs(picks(spec, "outputs"))
          .nodes(picks(spec, "nodes"))
          .seeds(doubles(spec, "seeds").stream().mapToDouble(Double::doubleValue).toArray());
      if (spec.has("selection")) {
        request.selection(Selection.valueOf(spec.get("selection").getAsString()));
      }
      if (spec.has("rows")) {
        List<double[]> rows = new ArrayList<>();
        for (JsonElement row : spec.getAsJsonArray("rows")) {
          List<Double> values = new ArrayList<>();
          row.getAsJsonArray().forEach(value -> values.add(value.getAsDouble()));
          rows.add(values.stream().mapToDouble(Double::doubleValue).toArray());
        }
        request.rows(rows.toArray(double[][]::new));
      }
      if (spec.has("allow_non_finite")) {
        request.allowNonFinite(spec.get("allow_non_finite").getAsBoolean());
      }
      if (spec.has("chunk_size")) {
        request.chunkSize(spec.get("chunk_size").getAsInt());
      }
      return request.build();
    }

    private Node[] picks(JsonObject spec, String key) {
      return ints(spec, key).stream().map(nodes::get).toArray(Node[]::new);
    }

    /** The case's request through the generated stub. */
    private Outcome rawCall(GradserveClient client, String rpc, JsonObject spec) {
      assertEquals("Evaluate", rpc, "raw calls are Evaluate only");
      com.gradserve.v1.Graph wire = raw != null ? raw : graph.toProto();
      EvaluateRequest.Builder request = EvaluateRequest.newBuilder().setGraph(wire);
      if (spec.has("plan_digest")) {
        byte[] digest = HexFormat.of().parseHex(spec.get("plan_digest").getAsString());
        request.setPlanDigest(com.google.protobuf.ByteString.copyFrom(digest));
        request.setGraph(com.gradserve.v1.Graph.newBuilder().addAllLeafValues(
            wire.getLeafValuesList()));
      }
      if (spec.has("leaf_values")) {
        request.setGraph(request.getGraph().toBuilder().clearLeafValues()
            .addAllLeafValues(doubles(spec, "leaf_values")));
      }
      try {
        var response = client.stub().evaluate(request.build());
        return new Outcome(response.getNodeIdsList(), response.getValuesList(),
            response.getGradsList(), response.getRows(), response.getPlanDigest().toByteArray(),
            1);
      } catch (StatusRuntimeException error) {
        throw Errors.from(error, new Errors.Where(client.target(), false, null));
      }
    }

    private void checkError(GradserveException error, JsonObject expect) {
      String status = expect.get("status").getAsString();
      assertEquals(status, error.code().name(), "the status of: " + error.getMessage());
      for (String text : strings(expect, "message_contains")) {
        assertTrue(error.serverMessage().contains(text),
            "'" + text + "' not in the message '" + error.serverMessage() + "'");
      }
      if (expect.has("field")) {
        assertEquals(expect.get("field").getAsString(), error.field(), "the field");
      }
      if (expect.has("node")) {
        assertEquals(expect.get("node").getAsInt(), error.node().orElse(-1),
            "the node of: " + error.serverMessage());
      }
    }

    private void checkResult(Outcome outcome, JsonObject expect) {
      String status = expect.get("status").getAsString();
      assertEquals(Status.Code.OK.name(), status, "the call succeeded, expected " + status);
      if (expect.has("node_ids")) {
        assertEquals(ints(expect, "node_ids"), outcome.ids(), "node ids");
        close("values", outcome.values(), doubles(expect, "values"));
        close("grads", outcome.grads(), doubles(expect, "grads"));
      }
      if (expect.has("samples")) {
        JsonObject samples = expect.getAsJsonObject("samples");
        Map<Integer, Integer> position = new java.util.HashMap<>();
        for (int i = 0; i < outcome.ids().size(); i++) {
          position.put(outcome.ids().get(i), i);
        }
        List<Integer> picked = ints(samples, "node_ids");
        close("sample values",
            picked.stream().map(id -> outcome.values().get(position.get(id))).toList(),
            doubles(samples, "values"));
        close("sample grads",
            picked.stream().map(id -> outcome.grads().get(position.get(id))).toList(),
            doubles(samples, "grads"));
        close("value sum", List.of(sum(outcome.values())),
            List.of(expect.get("value_sum").getAsDouble()));
        close("grad sum", List.of(sum(outcome.grads())),
            List.of(expect.get("grad_sum").getAsDouble()));
      }
      if (expect.has("total_nodes")) {
        assertEquals(expect.get("total_nodes").getAsInt(), outcome.ids().size(), "total nodes");
      }
      if (expect.has("chunks")) {
        assertEquals(expect.get("chunks").getAsInt(), outcome.chunks(), "chunks");
      }
      if (expect.has("rows")) {
        assertEquals(expect.get("rows").getAsInt(), outcome.rows(), "rows");
      }
      if (expect.has("plan_digest_length")) {
        assertEquals(expect.get("plan_digest_length").getAsInt(), outcome.digest().length,
            "plan digest length");
      }
    }

    private void checkOps(List<OpInfo> ops, JsonObject expect) {
      List<String> names = ops.stream().map(OpInfo::getName).toList();
      assertEquals(names.stream().sorted().toList(), names, "ops sorted by name");
      Map<String, OpInfo> listed =
          ops.stream().collect(Collectors.toMap(OpInfo::getName, Function.identity()));
      for (JsonElement element : expect.getAsJsonArray("ops")) {
        JsonObject want = element.getAsJsonObject();
        OpInfo op = listed.get(want.get("name").getAsString());
        if (op == null) {
          fail("op " + want.get("name").getAsString() + " is not listed");
        }
        assertEquals(want.get("arity").getAsInt(), op.getArity(), op.getName() + " arity");
        assertEquals(want.get("variadic").getAsBoolean(), op.getVariadic(), op.getName());
      }
    }

    private void close(String what, List<Double> got, List<Double> want) {
      assertEquals(want.size(), got.size(), what + ": the number of results");
      for (int i = 0; i < got.size(); i++) {
        double tolerance = absolute + relative * Math.abs(want.get(i));
        assertEquals(want.get(i), got.get(i), tolerance, what + "[" + i + "]");
      }
    }
  }

  private static double sum(List<Double> values) {
    double total = 0;
    for (double value : values) {
      total += value;
    }
    return total;
  }

  private static List<Integer> ints(JsonObject spec, String key) {
    List<Integer> out = new ArrayList<>();
    if (spec.has(key)) {
      spec.getAsJsonArray(key).forEach(value -> out.add(value.getAsInt()));
    }
    return out;
  }

  private static List<Double> doubles(JsonObject spec, String key) {
    List<Double> out = new ArrayList<>();
    if (spec.has(key)) {
      spec.getAsJsonArray(key).forEach(value -> out.add(value.getAsDouble()));
    }
    return out;
  }

  private static List<String> strings(JsonObject spec, String key) {
    List<String> out = new ArrayList<>();
    if (spec.has(key)) {
      spec.getAsJsonArray(key).forEach(value -> out.add(value.getAsString()));
    }
    return out;
  }

  private static List<Integer> list(int[] values) {
    return java.util.Arrays.stream(values).boxed().toList();
  }

  private static List<Double> list(double[] values) {
    return java.util.Arrays.stream(values).boxed().toList();
  }

  /** An address where nothing listens (a port that was free a moment ago). */
  private static String unusedTarget() throws java.io.IOException {
    try (ServerSocket probe = new ServerSocket(0)) {
      return "127.0.0.1:" + probe.getLocalPort();
    }
  }
}
