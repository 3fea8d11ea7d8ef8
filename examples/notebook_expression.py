"""The notebook's first example, e = (a + b) * d, differentiated by a gradserve server.

Run a server (`uv run gradserve serve`), then: uv run python examples/notebook_expression.py
"""

import argparse

from gradserve.client import DEFAULT_TARGET, Client, Value


def main(target: str) -> None:
    a, b, d = Value(5.0, "a"), Value(3.0, "b"), Value(10.0, "d")
    c = a + b
    c.label = "c"
    e = c * d
    e.label = "e"
    with Client(target) as client:
        e.backward(client)
    for v in (a, b, c, d, e):
        print(f"{v.label}: data {v.data:g}, grad {v.grad:g}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=DEFAULT_TARGET, help="the server's host:port")
    main(parser.parse_args().target)
