"""The large calls' share: what the calls charged more than an eighth of the budget may
hold together, half of it.

Each kind of abusive call was bounded on its own: a batch evaluated in row blocks of half
the budget, unary replies waiting for a reader within the sending share (a quarter), a
wide Hessian-vector product at its charge (about 300 MiB of 512). Together the bounds came
to more than the whole budget, and the ordinary calls (issue 19's soak: streams of 28.5
MiB, small calls) found nothing left. So a call whose charge is large holds its *whole*
charge in this share as well as in the budget (``admission.Charge``): the large calls of
every kind compete within half the budget, and the ordinary calls always have the other
half. Only the whole charge gives that bound: were only the part above the threshold held
here, each large call's first eighth would add up outside the share.

Why an eighth (64 MiB of the soak's 512): every abusive call of the soak is larger (a
stalled 62 MB reply's two copies, a batch's row block, the wide HVP), every call of its
legitimate clients smaller (a large stream holds at most 45.8 MiB, while it plans), and so
is a stream whose reader never reads (16 MiB). With a sixteenth, on a 128 MiB budget, such
unread streams and the streams computing beside them would queue for one 64 MiB share.

A large call waits for the share, in order (``admission``), before it waits for the
budget, within one wait in all; it is refused after that wait as the budget refuses. A
call larger than the share may hold it when it is alone in it, so that every call that
fits the budget still runs; the ordinary calls then have what that one call leaves.

A batch's row blocks hold at most half this share (``servicer``'s ``_job_memory``), so
that a batch evaluated in blocks for seconds leaves room in it for another large call.
"""

from gradserve.server.service.admission import BudgetBusy, Charge, MemoryBudget

LARGE_FRACTION = 8  # a charge of more than budget / LARGE_FRACTION is large
SHARE_FRACTION = 2  # of the calls' budget
USED_METRIC = "gradserve_large_calls_share_used_bytes"
USED_HELP = (
    "Bytes of the memory budget held by large calls (charged more than an eighth of it), "
    "which together may hold half of it"
)
REFUSED_METRIC = "gradserve_large_calls_share_refused"
REFUSED_HELP = (
    "Large calls refused because other large calls held their share of the budget for the "
    "budget wait (each also counted with the RESOURCE_EXHAUSTED calls)"
)


class LargeCallsBusy(BudgetBusy):
    """The large calls' share stayed held by other large calls."""

    def __init__(self, needed: int, share: "LargeCallsShare", waited: float) -> None:
        self.needed, self.budget = needed, share.calls.total
        Exception.__init__(
            self,
            f"the call needs an estimated {needed / 2**20:,.1f} MiB of server memory, and "
            f"this server's share for large calls ({share.describe()}) stayed held by other "
            f"large calls for {waited:.1f} s; retry later, or send fewer rows or nodes per "
            "call",
        )


class LargeCallsShare(MemoryBudget):
    """Half the calls' budget, held by the charges above an eighth of it."""

    def __init__(self, calls: MemoryBudget) -> None:
        super().__init__(calls.total // SHARE_FRACTION, calls.wait_s)
        self.calls = calls
        self.threshold = calls.total // LARGE_FRACTION
        self.refused = 0  # calls refused after waiting for the share
        # The calls' budget says what never fits; alone, any call fits here.
        self.ceiling = calls.ceiling

    def describe(self) -> str:
        return (
            f"{self.total / 2**20:,.1f} MiB: half the calls' budget, for the calls charged "
            f"more than {self.threshold / 2**20:,.1f} MiB"
        )

    def _has_room(self, charge: Charge, amount: int) -> bool:
        return self.used + amount <= self.total or self.used == charge.bytes

    def _busy(self, needed: int, waited: float) -> BudgetBusy:
        self.refused += 1
        return LargeCallsBusy(needed, self, waited)


def share_large_calls(budget: MemoryBudget) -> LargeCallsShare:
    """Give ``budget`` a large calls' share: its large charges are held there too."""
    budget.large = LargeCallsShare(budget)
    return budget.large
