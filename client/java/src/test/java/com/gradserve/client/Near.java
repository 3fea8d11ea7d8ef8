package com.gradserve.client;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** Comparisons of floating-point results with a relative tolerance. */
final class Near {
  private Near() {}

  static void near(double expected, double actual, String what) {
    assertEquals(expected, actual, 1e-12 * (1 + Math.abs(expected)), what);
  }
}
