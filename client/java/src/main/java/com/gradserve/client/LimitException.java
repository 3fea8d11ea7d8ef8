package com.gradserve.client;

/**
 * The request is beyond the server's limits (RESOURCE_EXHAUSTED): its own size (nodes, fan-in,
 * message size; {@link #field()} names it) or the server's capacity ({@link
 * #quotaViolations()} names the limit, and retrying later may work).
 */
public final class LimitException extends GradserveException {
  private static final long serialVersionUID = 1L;

  LimitException(String message, Details details) {
    super(message, details);
  }
}
