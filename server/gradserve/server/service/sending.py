"""The sending share: what unary replies may hold of the budget while grpc sends them.

A unary reply stays whole with grpc (two copies, both charged to the budget) until its
reader takes it, and grpc.aio cannot end a call whose write waits for the reader's
flow-control window: cancelling the handler's task, or ``context.abort`` from another
task, ends neither the stream nor the hold (docs/running-safely.md, "Readers that never
read"). Readers that never read would otherwise fill the calls' budget and refuse the
work of everyone else after the budget wait.

So a unary reply larger than a small size takes its two copies from this share *before*
it is evaluated, and holds them until the call ends (when grpc lets go of the message).
The share is a quarter of the calls' budget, and at least two copies of the largest
message, so that any reply that may be sent fits; one connection holds at most half of
it unless it holds nothing (so a connection may always have one reply in flight). A call
that finds the share taken waits, holding only its request, as long as a call may wait
for the budget, then is refused. The replies' bytes are still charged to the budget as
well: the share only bounds how much of it replies may hold, so the rest stays for
computing (streams, evaluations)."""

from gradserve.server.service.admission import (
    SMALL_FRACTION,
    BudgetBusy,
    Charge,
    MemoryBudget,
)

SHARE_FRACTION = 4  # of the calls' budget (the share's size when that is larger)
USED_METRIC = "gradserve_sending_share_used_bytes"
USED_HELP = (
    "Bytes of the sending share held by unary replies (two copies each) from before their "
    "evaluation until grpc lets go of them"
)
REFUSED_METRIC = "gradserve_sending_share_refused"
REFUSED_HELP = (
    "Unary calls refused because the sending share stayed held by other replies for the "
    "budget wait (each also counted with the RESOURCE_EXHAUSTED calls)"
)


class SendingBusy(BudgetBusy):
    """The sending share stayed taken by other replies (readers slow or never reading)."""

    def __init__(self, needed: int, share: "SendingShare", waited: float) -> None:
        self.needed, self.budget = needed, share.total
        Exception.__init__(
            self,
            f"the call's reply needs an estimated {needed / 2**20:,.1f} MiB of server memory "
            f"while it is sent, and this server's share for unary replies being sent "
            f"({share.describe()}) stayed held by replies their clients had not read for "
            f"{waited:.1f} s; retry later, or use EvaluateStream, whose chunks are small",
        )


class SendingShare(MemoryBudget):
    """The share of the calls' budget unary replies may hold while they are sent."""

    def __init__(self, calls: MemoryBudget, max_message_bytes: int) -> None:
        size = min(calls.total, max(calls.total // SHARE_FRACTION, 2 * max_message_bytes))
        super().__init__(size, calls.wait_s)
        self.calls = calls
        # A reply charged at most this much needs no share: as the budget's small calls,
        # it never waits.
        self.smallest = calls.total // SMALL_FRACTION
        self.refused = 0  # calls refused after waiting for the share

    def describe(self) -> str:
        return (
            f"{self.total / 2**20:,.1f} MiB: a quarter of the calls' budget, at least two "
            f"max-message-mb replies; at most half of it for one connection"
        )

    def _busy(self, needed: int, waited: float) -> BudgetBusy:
        self.refused += 1
        return SendingBusy(needed, self, waited)

    def reservation(self, connection: str) -> "Reservation":
        return Reservation(self, connection)


class Reservation(Charge):
    """What one call's reply holds of the sending share, counted to its connection."""

    def __init__(self, share: SendingShare, connection: str) -> None:
        super().__init__(share)
        self.for_connection = connection

    @property
    def connection(self) -> str:
        return self.for_connection

    def _may_take(self, amount: int) -> bool:
        """Within the connection's half of the share, unless it holds none of it."""
        share = self.budget
        held = share.by_connection.get(self.for_connection, 0)
        return not held or held + amount <= share.total // 2
