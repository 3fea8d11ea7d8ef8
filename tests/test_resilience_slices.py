"""A step that computes for seconds gives its compute slot to a waiting call that has used
less CPU, at its next stop check, and parks its thread until its turn (``compute_slots``):
issue 19's soak, where one wide HVP's 1.5 s step held a slot while 32 legitimate clients'
short calls queued. A parked step that is cancelled or runs out of time wakes, stops and
leaves no thread, slot or queue place behind."""

import threading
import time

import numpy as np
import pytest
from hardening import wait_until
from resilience import HANG_S, channel_to, stub_on

from gradserve.ops import Op
from gradserve.server.registry import LoadedOp
from gradserve.server.service.app import running_server
from gradserve.v1 import gradserve_pb2 as pb

SPIN_S = 0.005  # the CPU each `spin` node burns (its thread's time) until released
LONG_SPINS = 1_500  # 7.5 s of CPU: far more than a slice, unless released
XS = [0.5, -0.25]  # the leaf's value in each of two rows (rows > 1: a step on a thread)


class Gated:
    """An identity op that, until ``release``, burns SPIN_S of its thread's CPU per call
    (``spin``) or waits using none (``hold``); it counts its calls."""

    def __init__(self, name: str) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.op = Op(name, 1, forward=self._forward, backward=lambda g, y, x: (g.copy(),))

    def _forward(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.op.name == "hold":
            self.release.wait(HANG_S * 6)
        began = time.thread_time()
        while time.thread_time() - began < SPIN_S and not self.release.is_set():
            pass
        return x.copy()


# x, then hold(x), over the rows XS: a call that holds its slot using no CPU.
HOLD_REQUEST = pb.EvaluateRequest(
    graph=pb.Graph(
        op_names=["hold"], node_ops=[0, 1], input_counts=[0, 1], input_ids=[0], leaf_values=XS
    ),
    rows=len(XS),
)


def _with(registry, *ops) -> dict[str, LoadedOp]:
    return {**registry, **{op.op.name: LoadedOp(op.op, op.op.name, "tests", "0") for op in ops}}


def spin_chain(spins: int) -> tuple[pb.EvaluateRequest, np.ndarray, np.ndarray]:
    """x, then ``spins`` times spin and, every second time, neg; over the rows XS. With its
    closed forms, each (nodes, rows): node k is x times -1 per neg up to k, and its gradient
    -1 per neg after k."""
    ops = [0]
    for k in range(spins):
        ops += [1, 2] if k % 2 else [1]
    nodes = len(ops)
    graph = pb.Graph(
        op_names=["spin", "neg"],
        node_ops=ops,
        input_counts=[0] + [1] * (nodes - 1),
        input_ids=range(nodes - 1),
        leaf_values=XS,
    )
    negs = np.cumsum(np.array(ops) == 2)
    values = np.outer((-1.0) ** negs, XS)
    grads = np.broadcast_to(((-1.0) ** (negs[-1] - negs))[:, None], values.shape)
    return pb.EvaluateRequest(graph=graph, rows=len(XS)), values, grads


def check_reply(reply: pb.EvaluateResponse, values: np.ndarray, grads: np.ndarray) -> None:
    """Every node's results, row by row, are the closed forms'."""
    assert list(reply.node_ids) == list(range(values.shape[0]))
    np.testing.assert_array_equal(np.array(reply.values).reshape(values.T.shape), values.T)
    np.testing.assert_array_equal(np.array(reply.grads).reshape(grads.T.shape), grads.T)


def test_a_long_step_gives_its_slot_to_a_short_call_and_then_finishes_right(registry):
    """One slot: a long chain computes; a short call of another connection arrives. The
    short call gets its answer while the long step is still unfinished (it could not, were
    the slot held to the step's end), and the long call's answer is then right."""
    spin = Gated("spin")
    long_request, long_values, long_grads = spin_chain(LONG_SPINS)
    short_request, short_values, short_grads = spin_chain(4)
    with (
        running_server(_with(registry, spin), threads=1) as server,
        channel_to(server.port, own_connection=1) as long_channel,
        channel_to(server.port, own_connection=2) as short_channel,
    ):
        slots = server._state.slots
        long_call = stub_on(long_channel).Evaluate.future(long_request, timeout=20 * HANG_S)
        try:
            assert wait_until(lambda: spin.calls >= 2, timeout=HANG_S)
            spun = spin.calls
            short = stub_on(short_channel).Evaluate(short_request, timeout=10 * HANG_S)
            check_reply(short, short_values, short_grads)
            assert not long_call.done()
            assert spin.calls - spun < LONG_SPINS - 4  # the long chain is far from its end
        finally:
            spin.release.set()
        check_reply(long_call.result(timeout=10 * HANG_S), long_values, long_grads)
        assert wait_until(lambda: slots.free == 1 and slots.parked == 0, timeout=HANG_S)
        assert slots.by_connection == {}


@pytest.mark.parametrize("ending", ["cancelled", "past its deadline"])
def test_a_parked_step_that_ends_wakes_and_frees_its_thread_and_slot(registry, ending):
    """One slot: a long chain computes, and parks once a call that has used less CPU (and
    then holds the slot, using none) arrives. Cancelled, or past its deadline, while parked,
    it wakes and stops: a thread is free for other work while the slot is still held, no
    queue place is left, and once the holding call ends the slot serves the next."""
    spin, hold = Gated("spin"), Gated("hold")
    long_request, _, _ = spin_chain(LONG_SPINS)
    timeout = 20 * HANG_S if ending == "cancelled" else 4.0
    with (
        running_server(_with(registry, spin, hold), threads=1) as server,
        channel_to(server.port, own_connection=1) as long_channel,
        channel_to(server.port, own_connection=2) as hold_channel,
    ):
        slots, executor = server._state.slots, server._state.executor
        try:
            long_call = stub_on(long_channel).Evaluate.future(long_request, timeout=timeout)
            assert wait_until(lambda: spin.calls >= 2, timeout=HANG_S)
            holding = stub_on(hold_channel).Evaluate.future(HOLD_REQUEST, timeout=10 * HANG_S)
            assert wait_until(lambda: hold.calls == 1 and slots.parked == 1, timeout=HANG_S)
            spun = spin.calls
            if ending == "cancelled":
                long_call.cancel()
            assert wait_until(long_call.done, timeout=2 * timeout)
            expected = "CANCELLED" if ending == "cancelled" else "DEADLINE_EXCEEDED"
            assert long_call.code().name == expected
            assert wait_until(lambda: slots.parked == 0, timeout=HANG_S)
            # The slot is still the holding call's, and one of the two threads runs it:
            # the other is free again.
            assert executor.submit(lambda: True).result(timeout=HANG_S)
            assert slots.free == 0 and not hold.release.is_set()
            assert spin.calls == spun  # the long step did not compute past its stop
        finally:
            hold.release.set()
            spin.release.set()
        assert holding.result(timeout=HANG_S).node_ids == [0, 1]
        assert wait_until(lambda: slots.free == 1, timeout=HANG_S)
        assert slots.by_connection == {} and slots.first_key == float("inf")
        short_request, short_values, short_grads = spin_chain(2)
        check_reply(
            stub_on(hold_channel).Evaluate(short_request, timeout=HANG_S), short_values, short_grads
        )


def test_a_long_step_pauses_beside_a_shorter_call_in_progress_and_not_alone(registry):
    """Two slots, so no one waits for one: a long chain computes while another client's
    call is in progress (holding the other slot, using no CPU). Once the chain has
    computed LONG it pauses after its slices, leaving the cores to the other call and the
    event loop; once the other call has ended, it computes on without pausing."""
    spin, hold = Gated("spin"), Gated("hold")
    long_request, long_values, long_grads = spin_chain(LONG_SPINS)
    with (
        running_server(_with(registry, spin, hold), threads=2) as server,
        channel_to(server.port, own_connection=1) as long_channel,
        channel_to(server.port, own_connection=2) as hold_channel,
    ):
        state = server._state
        try:
            holding = stub_on(hold_channel).Evaluate.future(HOLD_REQUEST, timeout=10 * HANG_S)
            assert wait_until(lambda: hold.calls == 1, timeout=HANG_S)
            long_call = stub_on(long_channel).Evaluate.future(long_request, timeout=20 * HANG_S)
            assert wait_until(lambda: state.slots.pauses >= 2, timeout=2 * HANG_S)
            assert state.long_calls == 1 and state.slots.first_key == float("inf")
            hold.release.set()
            assert holding.result(timeout=HANG_S).node_ids == [0, 1]
            assert wait_until(lambda: state.active == 1, timeout=HANG_S)
            paused, spun = state.slots.pauses, spin.calls
            # Alone, it computes a second's worth (20 slices) with no pause.
            assert wait_until(lambda: spin.calls >= spun + 200, timeout=2 * HANG_S)
            assert state.slots.pauses == paused
        finally:
            hold.release.set()
            spin.release.set()
        check_reply(long_call.result(timeout=10 * HANG_S), long_values, long_grads)
        assert wait_until(lambda: state.active == 0, timeout=HANG_S)
        assert state.long_calls == 0
