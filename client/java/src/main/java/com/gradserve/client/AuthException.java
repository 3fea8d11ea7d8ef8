package com.gradserve.client;

/**
 * The server refused the caller (UNAUTHENTICATED: no or a wrong token; PERMISSION_DENIED):
 * {@link #code()} says which.
 */
public final class AuthException extends GradserveException {
  private static final long serialVersionUID = 1L;

  AuthException(String message, Details details) {
    super(message, details);
  }
}
