package com.gradserve.client;

/**
 * The call's deadline (the client's timeout, the caller's deadline or the server's default)
 * passed (DEADLINE_EXCEEDED).
 */
public final class DeadlineExceededException extends GradserveException {
  private static final long serialVersionUID = 1L;

  DeadlineExceededException(String message, Details details) {
    super(message, details);
  }
}
