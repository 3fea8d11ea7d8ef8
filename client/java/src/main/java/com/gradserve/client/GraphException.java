package com.gradserve.client;

/**
 * The server rejected the graph or the request (INVALID_ARGUMENT): {@link #node()} and {@link
 * #field()} say where. Do not retry.
 */
public final class GraphException extends GradserveException {
  private static final long serialVersionUID = 1L;

  GraphException(String message, Details details) {
    super(message, details);
  }
}
