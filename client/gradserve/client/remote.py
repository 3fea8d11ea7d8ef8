"""What a Value needs from the client layer, which supplies it: how pending data is fetched
and which client a backward without one calls.

``value.py`` imports this module, not the client layer; the modules that do the work
(``pending``, ``default``) install their functions here when they are imported, which
importing ``gradserve.client`` always does. So the package's imports run one way (client
layer -> value -> tape), with no cycle through the Value. (Drawing is the optional extra
``draw.py``, which a Value imports when it is drawn; it needs Values only as a type.)
"""


def _nothing_pending(tape) -> None:
    return None


def _no_client():
    return None


evaluate_pending = _nothing_pending  # (tape) -> None: fill .data of its pending Values
configured_client = _no_client  # () -> the default server's Client, or None
default_client = _no_client  # () -> that Client, or NoServerConfigured saying how to set one
