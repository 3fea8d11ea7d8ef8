package com.gradserve.client;

/** The call was cancelled (CANCELLED), by the caller or by the server. */
public final class CancelledException extends GradserveException {
  private static final long serialVersionUID = 1L;

  CancelledException(String message, Details details) {
    super(message, details);
  }
}
