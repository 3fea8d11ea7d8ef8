package com.gradserve.client;

import com.gradserve.v1.EvaluateRequest;
import com.gradserve.v1.GradientChunk;
import com.gradserve.v1.GradientServiceGrpc;
import com.gradserve.v1.GradientServiceGrpc.GradientServiceBlockingStub;
import com.gradserve.v1.ListOpsRequest;
import com.gradserve.v1.OpInfo;
import com.gradserve.v1.Selection;
import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptor;
import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.File;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.Consumer;

/**
 * A connection to a gradserve server. Build a {@link Graph}, then evaluate it and get every
 * node's value and gradient:
 *
 * <pre>{@code
 * try (GradserveClient client = GradserveClient.builder("localhost:50051")
 *     .timeout(Duration.ofSeconds(30)).build()) {
 *   Graph g = new Graph();
 *   Node x = g.leaf(2).label("x"), w = g.leaf(-3).label("w");
 *   Node y = x.mul(w).tanh();
 *   client.backward(y); // then x.grad() is dy/dx
 * }
 * }</pre>
 *
 * <p>A graph's structure goes over the wire once: later calls send the plan digest the server
 * returned and the leaf values, and the whole graph again only if the server answers
 * NOT_FOUND. Failures are {@link GradserveException}s. A client is safe for concurrent use (a
 * graph is not).
 *
 * <p>Deadlines: {@link Builder#timeout} bounds every call that has no deadline of its own. A
 * deadline on the current gRPC {@link Context}, or one given with {@link #withDeadline}, wins
 * over it; without any, the server's default deadline (300 s) applies. A call made inside a
 * cancelled gRPC Context ends with {@link CancelledException}.
 */
public final class GradserveClient implements AutoCloseable {
  /** The server's default message limit, which the client matches (gRPC's is 4 MiB). */
  public static final int MAX_MESSAGE_BYTES = 64 << 20;

  /**
   * The node count above which {@link #backward} receives its results through EvaluateStream,
   * whose chunks never approach a message limit.
   */
  public static final int STREAM_ABOVE = 1 << 20;

  private final ManagedChannel channel;
  private final GradientServiceBlockingStub stub;
  private final String target;
  private final boolean tls;
  private final Duration timeout; // null: the server's default
  private final Deadline deadline; // from withDeadline, or null
  private final AtomicBoolean closed;

  private GradserveClient(
      ManagedChannel channel,
      GradientServiceBlockingStub stub,
      String target,
      boolean tls,
      Duration timeout,
      Deadline deadline,
      AtomicBoolean closed) {
    this.channel = channel;
    this.stub = stub;
    this.target = target;
    this.tls = tls;
    this.timeout = timeout;
    this.deadline = deadline;
    this.closed = closed;
  }

  /** A builder for a client of the server at {@code target} ("host:port"). */
  public static Builder builder(String target) {
    return new Builder(target);
  }

  /** The "host:port" this client calls. */
  public String target() {
    return target;
  }

  /**
   * This client, on the same connection, with every call bounded by {@code deadline} instead
   * of the client's timeout. Closing either closes the connection.
   */
  public GradserveClient withDeadline(Deadline deadline) {
    return new GradserveClient(channel, stub, target, tls, timeout, deadline, closed);
  }

  /** This client, on the same connection, with another timeout for calls without a deadline. */
  public GradserveClient withTimeout(Duration timeout) {
    return new GradserveClient(channel, stub, target, tls, timeout, null, closed);
  }

  /**
   * The generated stub on this connection, for calls this client does not wrap: TLS, the
   * token and the message limits apply to it, deadlines do not (set them on the stub).
   */
  public GradientServiceBlockingStub stub() {
    return stub;
  }

  /** One call's stub, with the deadline that applies to it, and what its errors name. */
  private record Call(GradientServiceBlockingStub stub, Errors.Where where) {
    GradserveException error(StatusRuntimeException failure) {
      return Errors.from(failure, where);
    }
  }

  /** The next call, on an open connection: its deadline and the timeout that set it. */
  private Call call() {
    if (closed.get()) {
      throw new IllegalStateException("the client was closed; make a new client");
    }
    Deadline inContext = Context.current().getDeadline();
    if (deadline != null) {
      return new Call(stub.withDeadline(deadline), where(remaining(deadline)));
    }
    if (inContext != null) {
      return new Call(stub, where(remaining(inContext)));
    }
    if (timeout != null) {
      return new Call(
          stub.withDeadlineAfter(timeout.toNanos(), TimeUnit.NANOSECONDS), where(timeout));
    }
    return new Call(stub, where(null));
  }

  private Errors.Where where(Duration callTimeout) {
    return new Errors.Where(target, tls, callTimeout);
  }

  private static Duration remaining(Deadline deadline) {
    return Duration.ofNanos(Math.max(0, deadline.timeRemaining(TimeUnit.NANOSECONDS)));
  }

  /** The server's ops, sorted by name. */
  public List<OpInfo> listOps() {
    Call call = call();
    try {
      return call.stub().listOps(ListOpsRequest.getDefaultInstance()).getOpsList();
    } catch (StatusRuntimeException error) {
      throw call.error(error);
    }
  }

  /** Evaluates {@code graph}'s last node and returns every node's results. */
  public Result evaluate(Graph graph) {
    return evaluate(graph, Request.defaults());
  }

  /** Evaluates {@code graph} and returns the selected nodes' results in one message. */
  public Result evaluate(Graph graph, Request request) {
    Call call = call();
    return withPlan(graph, request, call, wire -> Result.of(call.stub().evaluate(wire)));
  }

  /**
   * Evaluates {@code graph} like {@link #evaluate}, but receives the results in bounded
   * chunks, handing each to {@code each} as it arrives. An exception thrown by {@code each}
   * cancels the call and is rethrown as it is.
   */
  public void stream(Graph graph, Request request, Consumer<Chunk> each) {
    Call call = call();
    try {
      withPlan(graph, request, call, wire -> receive(call.stub(), wire, each));
    } catch (HandlerFailure failure) {
      throw failure.thrown;
    }
  }

  /** One EvaluateStream call, cancelled when it returns or throws before its end. */
  private static Result receive(
      GradientServiceBlockingStub call, EvaluateRequest wire, Consumer<Chunk> each) {
    Context.CancellableContext scope = Context.current().withCancellation();
    Context previous = scope.attach();
    try {
      Iterator<GradientChunk> chunks = call.evaluateStream(wire);
      Result last = null;
      while (chunks.hasNext()) {
        Chunk chunk = Chunk.of(chunks.next());
        try {
          each.accept(chunk);
        } catch (RuntimeException thrown) {
          throw new HandlerFailure(thrown);
        }
        last = chunk;
      }
      return last;
    } finally {
      scope.detach(previous);
      scope.cancel(null);
    }
  }

  /** Carries the stream handler's own exception past the status translation. */
  private static final class HandlerFailure extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final transient RuntimeException thrown;

    HandlerFailure(RuntimeException thrown) {
      super(null, null, false, false);
      this.thrown = thrown;
    }
  }

  /**
   * Evaluates {@code loss}'s graph and differentiates {@code loss}, then fills every node's
   * value and gradient (read them with {@link Node#value()} and {@link Node#grad()}). Graphs
   * above {@link #STREAM_ABOVE} nodes are received through EvaluateStream.
   */
  public void backward(Node loss) {
    Graph graph = loss.graph();
    Request request = Request.builder().outputs(loss).selection(Selection.SELECTION_ALL).build();
    double[] values = new double[graph.size()];
    double[] grads = new double[graph.size()];
    Consumer<Result> keep =
        result -> {
          int[] ids = result.rawNodeIds();
          double[] resultValues = result.rawValues();
          double[] resultGrads = result.rawGrads();
          for (int j = 0; j < ids.length; j++) {
            values[ids[j]] = resultValues[j];
            grads[ids[j]] = resultGrads[j];
          }
        };
    if (graph.size() > STREAM_ABOVE) {
      stream(graph, request, keep::accept);
    } else {
      keep.accept(evaluate(graph, request));
    }
    graph.keepResults(values, grads);
  }

  /** One attempt of a call, with the graph's plan digest or its whole structure. */
  private interface Attempt {
    Result run(EvaluateRequest wire);
  }

  /**
   * Makes the call with the graph's plan digest when it has one, sending the whole graph again
   * if the server no longer holds that plan, and remembers the digest returned.
   */
  private static Result withPlan(Graph graph, Request request, Call call, Attempt attempt) {
    boolean byDigest = graph.planDigest() != null;
    Result result;
    try {
      result = attempt.run(request.toProto(graph, false));
    } catch (StatusRuntimeException error) {
      if (!byDigest || error.getStatus().getCode() != Status.Code.NOT_FOUND) {
        throw call.error(error);
      }
      graph.forgetDigest();
      try {
        result = attempt.run(request.toProto(graph, true));
      } catch (StatusRuntimeException again) {
        throw call.error(again);
      }
    }
    if (result != null) {
      graph.rememberDigest(result.planDigest());
    }
    return result;
  }

  /** Closes the connection; calls in flight are cancelled after five seconds. */
  @Override
  public void close() {
    if (closed.getAndSet(true)) {
      return;
    }
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException interrupted) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  /** Configures a {@link GradserveClient}; plaintext unless a TLS option is given. */
  public static final class Builder {
    private final String target;
    private ChannelCredentials credentials;
    private boolean tls;
    private File caFile;
    private File certFile;
    private File keyFile;
    private String token;
    private Duration timeout;
    private int maxMessageBytes = MAX_MESSAGE_BYTES;
    private final List<ClientInterceptor> interceptors = new ArrayList<>();

    private Builder(String target) {
      if (target == null || target.isBlank()) {
        throw new IllegalArgumentException("the target is empty: give \"host:port\"");
      }
      this.target = target;
    }

    /** Connects over TLS, trusting the system's root certificates. */
    public Builder tls() {
      tls = true;
      return this;
    }

    /** Connects over TLS, trusting the CA certificates in the PEM file {@code caFile}. */
    public Builder tls(File caFile) {
      tls = true;
      this.caFile = caFile;
      return this;
    }

    /**
     * Presents this certificate and key (PEM files; the key in PKCS#8) to the server: mutual
     * TLS. Implies TLS; combine with {@link #tls(File)} to choose the CA.
     */
    public Builder clientCertificate(File certFile, File keyFile) {
      tls = true;
      this.certFile = certFile;
      this.keyFile = keyFile;
      return this;
    }

    /**
     * Connects with these gRPC credentials (a TlsChannelCredentials with a trust manager of
     * your own, say) instead of the TLS options above.
     */
    public Builder credentials(ChannelCredentials credentials) {
      this.credentials = credentials;
      return this;
    }

    /**
     * Sends "authorization: Bearer TOKEN" with every call. Use it with TLS: on a plaintext
     * connection anyone on the path can read the token.
     */
    public Builder token(String token) {
      this.token = token;
      return this;
    }

    /** Bounds every call that has no deadline of its own (default: the server's, 300 s). */
    public Builder timeout(Duration timeout) {
      if (timeout.isNegative() || timeout.isZero()) {
        throw new IllegalArgumentException("the timeout must be positive, not " + timeout);
      }
      this.timeout = timeout;
      return this;
    }

    /** The largest message sent or received (default {@link #MAX_MESSAGE_BYTES}). */
    public Builder maxMessageBytes(int bytes) {
      if (bytes <= 0) {
        throw new IllegalArgumentException("maxMessageBytes must be positive, not " + bytes);
      }
      this.maxMessageBytes = bytes;
      return this;
    }

    /** Adds interceptors to the channel (tracing, logging), the first one called last. */
    public Builder intercept(ClientInterceptor... added) {
      interceptors.addAll(List.of(added));
      return this;
    }

    /**
     * The client. It does not wait for the server: a server that is down makes calls fail
     * with {@link ServerUnavailableException}.
     */
    public GradserveClient build() {
      ManagedChannel channel =
          Channels.open(
              new Channels.Settings(
                  target,
                  credentials,
                  tls,
                  caFile,
                  certFile,
                  keyFile,
                  maxMessageBytes,
                  List.copyOf(interceptors)));
      GradientServiceBlockingStub stub =
          GradientServiceGrpc.newBlockingStub(channel).withMaxOutboundMessageSize(maxMessageBytes);
      if (token != null) {
        stub = stub.withCallCredentials(new BearerToken(token));
      }
      boolean secure =
          credentials == null ? tls : !(credentials instanceof InsecureChannelCredentials);
      return new GradserveClient(
          channel, stub, target, secure, timeout, null, new AtomicBoolean());
    }
  }
}
