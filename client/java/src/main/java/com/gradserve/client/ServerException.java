package com.gradserve.client;

/**
 * The server failed while evaluating (INTERNAL, e.g. an op plugin's bug, with an error id to
 * find in its log), or answered with a status the client does not expect.
 */
public final class ServerException extends GradserveException {
  private static final long serialVersionUID = 1L;

  ServerException(String message, Details details) {
    super(message, details);
  }
}
