package com.gradserve.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.QuotaFailure;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.util.ArrayList;
import java.util.List;

/**
 * The one place a failed call becomes a {@link GradserveException}: the subclass for its
 * status code, a message worded as the Python SDK words it, and the google.rpc details from
 * the grpc-status-details-bin trailer.
 */
final class Errors {
  private Errors() {}

  /** The typed exception for a failed call to {@code target}. */
  static GradserveException from(Throwable error, String target) {
    GradserveException.Details details = details(error);
    Status status = details.status();
    String text = status.getDescription() == null ? "" : status.getDescription();
    String name = status.getCode().name();
    return switch (status.getCode()) {
      case INVALID_ARGUMENT -> new GraphException(
          details.fieldViolations().isEmpty()
              ? text
              : details.fieldViolations().get(0).getDescription(),
          details);
      case UNAVAILABLE -> new ServerUnavailableException(
          "server unavailable at " + target + ": " + text, details);
      case DEADLINE_EXCEEDED -> new DeadlineExceededException(
          "deadline exceeded: " + text, details);
      case UNAUTHENTICATED, PERMISSION_DENIED -> new AuthException(name + ": " + text, details);
      case RESOURCE_EXHAUSTED -> new LimitException(name + ": " + text, details);
      case NOT_FOUND -> new PlanNotFoundException(name + ": " + text, details);
      case CANCELLED -> new CancelledException(name + ": " + text, details);
      default -> new ServerException(name + ": " + text, details);
    };
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
