"""What a Value needs from the client layer, which supplies it: how pending data is fetched,
which client a backward without one calls, and how a Value is drawn.

``value.py`` and ``tape.py`` import only this module; the modules that do the work
(``pending``, ``default``, ``draw``) install their functions here when they are imported,
which importing ``gradserve.client`` always does. So the package's imports run one way
(client layer -> value -> tape), with no cycle through the Value.
"""


def _nothing_pending(tape) -> None:
    return None


def _no_client():
    return None


evaluate_pending = _nothing_pending  # (tape) -> None: fill .data of its pending Values
configured_client = _no_client  # () -> the default server's Client, or None
default_client = _no_client  # () -> that Client, or NoServerConfigured saying how to set one
draw = None  # (value) -> its drawing (draw.draw_dot)
