"""Draw the notebook's neuron, with its values and gradients, to an SVG file.

Needs Graphviz's `dot` program (Debian: apt-get install graphviz). Run a server
(`uv run gradserve serve`), then: uv run python examples/draw_graph.py neuron.svg
"""

import argparse
import sys

from notebook_neuron import neuron

from gradserve.client import DEFAULT_TARGET, Client, GraphvizNotFound, draw_dot, render


def main(target: str, path: str) -> int:
    v = neuron()
    with Client(target) as client:
        v["o"].backward(client)
    drawing = draw_dot(v["o"])
    try:
        print(f"wrote {render(drawing, path)}")
    except GraphvizNotFound as error:
        print(f"{error}\n\n{drawing.source}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="neuron.svg", help="the file to write")
    parser.add_argument("--target", default=DEFAULT_TARGET, help="the server's host:port")
    args = parser.parse_args()
    sys.exit(main(args.target, args.path))
