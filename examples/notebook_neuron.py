"""The notebook's neuron, o = tanh(x1*w1 + x2*w2 + b), differentiated by a gradserve server.

Run a server (`uv run gradserve serve`), then: uv run python examples/notebook_neuron.py
"""

import argparse

from gradserve.client import DEFAULT_TARGET, Client, Value


def neuron() -> dict[str, Value]:
    v = {
        "x1": Value(2.0, "x1"),
        "x2": Value(0.0, "x2"),
        "w1": Value(-3.0, "w1"),
        "w2": Value(1.0, "w2"),
        "b": Value(6.8813735870195432, "b"),
    }
    v["n"] = v["x1"] * v["w1"] + v["x2"] * v["w2"] + v["b"]
    v["o"] = v["n"].tanh()
    for name, value in v.items():
        value.label = name
    return v


def main(target: str) -> None:
    v = neuron()
    with Client(target) as client:
        v["o"].backward(client)
    for name, value in v.items():
        print(f"{name}: data {value.data:.4f}, grad {value.grad:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=DEFAULT_TARGET, help="the server's host:port")
    main(parser.parse_args().target)
