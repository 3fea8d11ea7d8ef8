package com.gradserve.client;

/**
 * The server does not hold the plan digest sent (NOT_FOUND). The client handles it by sending
 * the whole graph again; it reaches callers of the raw stub only.
 */
public final class PlanNotFoundException extends GradserveException {
  private static final long serialVersionUID = 1L;

  PlanNotFoundException(String message, Details details) {
    super(message, details);
  }
}
