package com.gradserve.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import com.gradserve.v1.EvaluateRequest;
import com.gradserve.v1.EvaluateResponse;
import com.gradserve.v1.GradientServiceGrpc;
import io.grpc.Grpc;
import io.grpc.InsecureServerCredentials;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/**
 * The client retries UNAVAILABLE through gRPC's own retry policy (the shared
 * service_config.json), up to its maxAttempts, against a server that refuses the first calls.
 */
class RetryTest {
  /** Refuses the first {@code failures} Evaluate calls with UNAVAILABLE; counts them all. */
  static final class Flaky extends GradientServiceGrpc.GradientServiceImplBase {
    final AtomicInteger attempts = new AtomicInteger();
    final int failures;

    Flaky(int failures) {
      this.failures = failures;
    }

    @Override
    public void evaluate(EvaluateRequest request, StreamObserver<EvaluateResponse> reply) {
      if (attempts.incrementAndGet() <= failures) {
        reply.onError(Status.UNAVAILABLE.withDescription("draining").asRuntimeException());
        return;
      }
      int last = request.getGraph().getNodeOpsCount() - 1;
      reply.onNext(
          EvaluateResponse.newBuilder().addNodeIds(last).addValues(1).addGrads(1).build());
      reply.onCompleted();
    }
  }

  private static void evaluateOnce(Server server) {
    try (GradserveClient client =
        GradserveClient.builder("127.0.0.1:" + server.getPort()).build()) {
      Graph g = new Graph();
      g.leaf(0.5).tanh();
      client.evaluate(g);
    }
  }

  private static Server start(Flaky flaky) throws IOException {
    return Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create())
        .addService(flaky)
        .build()
        .start();
  }

  @Test
  void aCallRefusedTwiceSucceedsOnTheThirdAttempt() throws IOException {
    Flaky flaky = new Flaky(2);
    Server server = start(flaky);
    try {
      evaluateOnce(server);
      assertEquals(3, flaky.attempts.get());
    } finally {
      server.shutdownNow();
    }
  }

  @Test
  void retriesStopAtThePolicysMaxAttempts() throws IOException {
    Flaky flaky = new Flaky(100);
    Server server = start(flaky);
    try {
      GradserveException error = assertThrows(GradserveException.class, () -> evaluateOnce(server));
      assertEquals(Status.Code.UNAVAILABLE, error.code());
      @SuppressWarnings("unchecked")
      Map<String, ?> policy =
          (Map<String, ?>)
              ((List<Map<String, ?>>) Channels.SERVICE_CONFIG.get("methodConfig"))
                  .get(0)
                  .get("retryPolicy");
      assertEquals(((Number) policy.get("maxAttempts")).intValue(), flaky.attempts.get());
    } finally {
      server.shutdownNow();
    }
  }
}
