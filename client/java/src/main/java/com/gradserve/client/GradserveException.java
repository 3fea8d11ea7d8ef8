package com.gradserve.client;

import com.google.rpc.BadRequest;
import com.google.rpc.QuotaFailure;
import io.grpc.Status;
import java.util.List;
import java.util.OptionalInt;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A failed call: its gRPC status code, the server's message and the google.rpc details the
 * server attached. Catch this class for every failure, or a subclass for one cause (see the
 * error model in gradserve.proto):
 *
 * <ul>
 *   <li>{@link GraphException}: INVALID_ARGUMENT, the request is not a valid evaluation;
 *   <li>{@link LimitException}: RESOURCE_EXHAUSTED, beyond the server's limits;
 *   <li>{@link PlanNotFoundException}: NOT_FOUND, a plan digest the server does not hold;
 *   <li>{@link AuthException}: UNAUTHENTICATED or PERMISSION_DENIED;
 *   <li>{@link DeadlineExceededException}: DEADLINE_EXCEEDED;
 *   <li>{@link CancelledException}: CANCELLED;
 *   <li>{@link ServerUnavailableException}: UNAVAILABLE, no server answered (or it is draining);
 *   <li>{@link ServerException}: INTERNAL (an op plugin failed) and any other status.
 * </ul>
 *
 * <p>The gRPC exception is not chained as the cause, so that a stack trace shows one clear
 * message; {@link #status()} keeps the status.
 */
public class GradserveException extends RuntimeException {
  private static final long serialVersionUID = 1L;
  private static final Pattern NODE = Pattern.compile("^node (\\d+)[ :]");

  private final transient Status status;
  private final transient List<BadRequest.FieldViolation> fieldViolations;
  private final transient List<QuotaFailure.Violation> quotaViolations;

  GradserveException(String message, Details details) {
    super(message);
    this.status = details.status();
    this.fieldViolations = List.copyOf(details.fieldViolations());
    this.quotaViolations = List.copyOf(details.quotaViolations());
  }

  /** The gRPC status code. */
  public Status.Code code() {
    return status.getCode();
  }

  /** The gRPC status: its code and the server's message. */
  public Status status() {
    return status;
  }

  /** The server's own message ("" if none), as the status carried it. */
  public String serverMessage() {
    String description = status.getDescription();
    return description == null ? "" : description;
  }

  /** The google.rpc.BadRequest field violations the server attached (client errors). */
  public List<BadRequest.FieldViolation> fieldViolations() {
    return fieldViolations;
  }

  /**
   * The google.rpc.QuotaFailure violations the server attached when its capacity (memory
   * budget, concurrent calls) was exhausted; each names the limit as its subject.
   */
  public List<QuotaFailure.Violation> quotaViolations() {
    return quotaViolations;
  }

  /** The first field violation's request field, e.g. "graph.input_ids[7]" ("" if none). */
  public String field() {
    return fieldViolations.isEmpty() ? "" : fieldViolations.get(0).getField();
  }

  /** The offending node's id, when the server's message starts with one ("node 7 ..."). */
  public OptionalInt node() {
    Matcher match = NODE.matcher(serverMessage());
    return match.find() ? OptionalInt.of(Integer.parseInt(match.group(1))) : OptionalInt.empty();
  }

  /** What a status carried, read once by {@link Errors}. */
  record Details(
      Status status,
      List<BadRequest.FieldViolation> fieldViolations,
      List<QuotaFailure.Violation> quotaViolations) {}
}
