package com.gradserve.client;

/**
 * No server answered at the target (UNAVAILABLE): not started, a wrong address, a TLS
 * mismatch, or draining for shutdown.
 */
public final class ServerUnavailableException extends GradserveException {
  private static final long serialVersionUID = 1L;

  ServerUnavailableException(String message, Details details) {
    super(message, details);
  }
}
