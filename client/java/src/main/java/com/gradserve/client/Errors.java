package com.gradserve.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.QuotaFailure;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.math.BigDecimal;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;

/**
 * The one place a failed call becomes a {@link GradserveException}: the subclass for its
 * status code, a message worded as the Python SDK words it, and the google.rpc details from
 * the grpc-status-details-bin trailer.
 */
final class Errors {
  private Errors() {}

  /** As the Python SDK and the other clients say it. */
  static final String DEADLINE =
      "the call took longer than its timeout of %s s: pass a larger timeout, "
          + "or send a smaller graph";

  /**
   * What a message names besides the server's words: the target, whether the channel uses
   * TLS, and the call's timeout (null when the call had none, so the server's default ended
   * it).
   */
  record Where(String target, boolean tls, Duration timeout) {}

  /** The typed exception for a failed call. */
  static GradserveException from(Throwable error, Where where) {
    GradserveException.Details details = details(error);
    Status status = details.status();
    String text = Unreachable.firstLine(status);
    String name = status.getCode().name();
    return switch (status.getCode()) {
      case INVALID_ARGUMENT -> new GraphException(
          details.fieldViolations().isEmpty()
              ? text
              : details.fieldViolations().get(0).getDescription(),
          details);
      case UNAVAILABLE -> unavailable(details, where);
      case DEADLINE_EXCEEDED -> new DeadlineExceededException(
          where.timeout() == null
              ? "the call passed the server's deadline: " + text
              : String.format(DEADLINE, seconds(where.timeout())),
          details);
      case RESOURCE_EXHAUSTED -> new LimitException(text, details);
      case UNAUTHENTICATED, PERMISSION_DENIED -> new AuthException(name + ": " + text, details);
      case NOT_FOUND -> new PlanNotFoundException(name + ": " + text, details);
      case CANCELLED -> new CancelledException(name + ": " + text, details);
      default -> new ServerException(name + ": " + text, details);
    };
  }

  private static GradserveException unavailable(GradserveException.Details details, Where where) {
    Unreachable.Explanation why =
        Unreachable.explain(details.status(), where.target(), where.tls());
    return why.refusedIdentity()
        ? new AuthException(why.message(), details)
        : new ServerUnavailableException(why.message(), details);
  }

  /** Seconds as Python's "{:g}" mostly writes them: 30, 0.5, 0.001. */
  static String seconds(Duration timeout) {
    BigDecimal seconds = new BigDecimal(timeout.toNanos()).movePointLeft(9);
    return seconds.stripTrailingZeros().toPlainString();
  }

  /**
   * The status and its BadRequest and QuotaFailure details. Details whose status disagrees
   * with the call's own are ignored: the message is then the one to trust.
   */
  static GradserveException.Details details(Throwable error) {
    Status status = Status.fromThrowable(error);
    List<BadRequest.FieldViolation> fields = new ArrayList<>();
    List<QuotaFailure.Violation> quotas = new ArrayList<>();
    com.google.rpc.Status rich;
    try {
      rich = StatusProto.fromThrowable(error);
    } catch (IllegalArgumentException inconsistent) {
      rich = null;
    }
    if (rich != null) {
      for (Any detail : rich.getDetailsList()) {
        try {
          if (detail.is(BadRequest.class)) {
            fields.addAll(detail.unpack(BadRequest.class).getFieldViolationsList());
          } else if (detail.is(QuotaFailure.class)) {
            quotas.addAll(detail.unpack(QuotaFailure.class).getViolationsList());
          }
        } catch (InvalidProtocolBufferException malformed) {
          // A detail that does not parse tells nothing; the status and message still do.
        }
      }
    }
    return new GradserveException.Details(status, fields, quotas);
  }
}
