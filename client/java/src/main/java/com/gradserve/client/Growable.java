package com.gradserve.client;

import java.util.Arrays;

/**
 * Growable arrays of primitives for the graph's columns: a million-node graph holds a few
 * int and double arrays rather than millions of boxed numbers.
 */
final class Growable {
  private Growable() {}

  /** A growable int array. */
  static final class Ints {
    private int[] items = new int[16];
    private int size;

    void add(int value) {
      if (size == items.length) {
        items = Arrays.copyOf(items, size * 2);
      }
      items[size++] = value;
    }

    int get(int index) {
      return items[index];
    }

    int size() {
      return size;
    }
  }

  /** A growable double array. */
  static final class Doubles {
    private double[] items = new double[16];
    private int size;

    void add(double value) {
      if (size == items.length) {
        items = Arrays.copyOf(items, size * 2);
      }
      items[size++] = value;
    }

    void set(int index, double value) {
      items[index] = value;
    }

    double get(int index) {
      return items[index];
    }

    int size() {
      return size;
    }

    double[] toArray() {
      return Arrays.copyOf(items, size);
    }
  }
}
