"""Newton's method with Hessians from a gradserve server: minimise
f(x, y) = e^(x + 3y - 0.1) + e^(x - 3y - 0.1) + e^(-x - 0.1), whose minimum is at
x = -ln(2)/2, y = 0 (Boyd and Vandenberghe's example 9.3.1). Each step solves
H d = -grad for the step d; the gradient norm falls quadratically near the minimum.

Run a server (`uv run gradserve serve`), then: uv run python examples/newton.py
"""

import argparse

import numpy as np

from gradserve.client import DEFAULT_TARGET, Client, Value


def main(target: str, steps: int, tolerance: float) -> None:
    x, y = Value(-1.0, "x"), Value(1.0, "y")
    f = (x + 3 * y - 0.1).exp() + (x - 3 * y - 0.1).exp() + (-x - 0.1).exp()
    with Client(target, timeout=30) as client:
        for step in range(steps + 1):
            gradient = client.evaluate(f, [x, y]).grads
            norm = float(np.linalg.norm(gradient))
            print(f"step {step}: x {x.data:.12f}, y {y.data:.12f}, |grad| {norm:.3e}")
            if norm < tolerance:
                break
            direction = np.linalg.solve(client.hessian(f, [x, y]), -gradient)
            x.data += float(direction[0])
            y.data += float(direction[1])
    print(f"minimum near x = {x.data:.12f}, y = {y.data:.12f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=DEFAULT_TARGET, help="the server's host:port")
    parser.add_argument("--steps", type=int, default=20, help="the most Newton steps")
    parser.add_argument("--tolerance", type=float, default=1e-12, help="stop below this |grad|")
    arguments = parser.parse_args()
    main(arguments.target, arguments.steps, arguments.tolerance)
