"""What a request means when it leaves a field empty, written once for every path: the
array path's decoding (``service/wire.py``), the small-call path on floats
(``engine/small_call.py``) and the reply-size check (``service/evaluation.py``).

The engine reads a request's fields but imports no protobuf: the wire's Selection values
are numbered here (``tests/test_protos.py`` checks that they match ``gradserve.v1``).
"""

from collections.abc import Sequence

SELECTION_UNSPECIFIED, SELECTION_ALL, SELECTION_LEAVES, SELECTION_NODES = range(4)


def outputs_or_default(outputs: Sequence[int], node_count: int) -> Sequence[int]:
    """The nodes to differentiate: the request's, or the last node."""
    return outputs if len(outputs) else [node_count - 1]


def seeds_or_default(seeds: Sequence[float], outputs: int) -> Sequence[float]:
    """The outputs' seed gradients: the request's, or 1 for each output."""
    return seeds if len(seeds) else [1.0] * outputs


def selection_of(selection: int, nodes: Sequence[int]) -> int:
    """The selection asked for: unspecified means the listed nodes, or every node when
    none are listed."""
    if selection == SELECTION_UNSPECIFIED:
        return SELECTION_NODES if len(nodes) else SELECTION_ALL
    return selection
