"""The GradientService: each method as a coroutine that receives, computes and sends.

The methods are registered with raw bytes in and out (see ``handlers``) and as
request-streaming on the server side, so that a handler starts as soon as a call does:
it then waits for the request message itself, which costs nothing, and nothing is
decoded by grpc before the call is authorised. Errors become statuses in one place,
``calls.CallScope``.
"""

import grpc

from gradserve.server import __version__
from gradserve.server.engine.run import Answer, Cost, Engine
from gradserve.server.registry import LoadedOp
from gradserve.server.service import evaluation, train_stream
from gradserve.server.service.calls import CallScope, Held, ServerState
from gradserve.v1 import gradserve_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GradientService"].full_name

# Work this small runs on the event loop: a hop to a thread and back costs more. An
# evaluation of arrays always runs on the executor (a plugin op may be slow, and only there
# can a call be abandoned while the loop goes on serving); an engine's answer that it says
# is quick (``Cost.QUICK``: a few hundred float operations of trusted ops) runs on the loop.
INLINE_REQUEST_BYTES = evaluation.SMALL_REQUEST_BYTES
INLINE_NODES = 2_048


class GradientServicer:
    def __init__(
        self,
        registry: dict[str, LoadedOp],
        engine: Engine,
        state: ServerState,
        max_message_bytes: int,
    ) -> None:
        self._state = state
        self._engine = engine
        self._evaluator = evaluation.Evaluator(engine, state.limits, max_message_bytes)
        self._ops_reply = _list_ops_reply(registry)

    async def _prepare(self, call: CallScope, unary: bool = False) -> tuple:
        """Receive, decode and plan the request: its digest, the engine's Answer or the Job
        to evaluate, and the chunk size it asks for. A unary reply that could not be sent
        is refused here, before any evaluation.

        These are all the call keeps of its request: the message (protobuf's arena, 8 MiB
        for a million selected ids) is let go here, so that it is not held while the call
        waits for memory, computes, or waits for a reader of its chunks."""
        raw = await call.receive()
        raw_length = len(raw)
        raw_bytes = evaluation.raw_request_bytes(raw_length)
        small_request = raw_length <= INLINE_REQUEST_BYTES
        with call.span.step("decoding"):
            if small_request:
                await call.admit(raw_bytes)
                request = evaluation.decode(raw)  # on the loop: a thread hop costs more
            else:
                # Queued for a thread, the call holds its request's bytes; decoding's
                # memory is taken with the thread (``CallScope.compute``), as every step's.
                await call.admit(raw_length)
                request = await call.compute(_decode, raw, memory=raw_bytes)
        del raw
        # Each read of a repeated or message field makes an object: read each once, and a
        # request naming its plan by digest carries no structure to read (plan checks that).
        if request.plan_digest:
            nodes = 0
        else:
            graph = request.graph
            call.labels, nodes = graph.labels, len(graph.node_ops)  # the message's, till planned
            del graph
        rows = request.rows or 1
        call.nodes, call.rows = nodes, rows
        inline = small_request and nodes <= INLINE_NODES
        # A small request's bound from its length is good enough, and quicker to get.
        call.request_bytes = raw_bytes if small_request else evaluation.request_bytes(request)
        with call.span.step("compiling") as step:  # the plan, cached or compiled now
            if inline:
                await call.admit(call.request_bytes + evaluation.compile_cost(request, raw_length))
                plan, digest = self._evaluator.plan(request, step, call.should_stop)
            else:
                plan, digest = await self._plan(call, request, raw_length, step)
        call.nodes = plan.node_count
        call.labels = plan.labels  # the plan's: the request's are its message's
        if unary:  # refused, or its reply's room held, before anything is evaluated
            await call.reserve_sending(self._evaluator.check_reply_fits(request, plan))
        chunk_size = request.chunk_size
        cost = self._engine.cost(plan, request)
        if cost is not Cost.NONE:
            with call.span.step("evaluating"):
                if cost is Cost.QUICK:
                    answer = self._engine.answer(plan, digest, request, call.should_stop)
                else:
                    answer = await call.compute(self._engine.answer, plan, digest, request)
            if answer is not None:
                return digest, answer, chunk_size  # its next charge is the answer's
        job = self._evaluator.job(request, plan, digest)
        del request
        # Compiling is over (the plan's arrays are the plan cache's), and the request is
        # let go: until its evaluation has a thread, the call holds the job's arrays.
        call.charge.resize_now(min(call.charge.bytes, job.arrays_bytes))
        return digest, job, chunk_size

    async def _plan(self, call: CallScope, request, raw_length: int, step) -> tuple:
        """A large request's plan and digest: looked up in the cache holding what the
        lookup takes, and only on a miss compiled, in a step holding compiling's memory.
        A call waiting for memory then holds only what its next step needs: twenty large
        streams whose plan is cached do not each hold a compile's 38 MiB (issue 19)."""
        await call.admit(call.request_bytes)  # while queued for a thread
        finding = call.request_bytes + evaluation.lookup_cost(request)
        work = self._evaluator.find
        plan, digest, graph = await call.compute(work, request, step, memory=finding)
        if plan is None:  # the graph's arrays (if made) stay: compiling's charge covers them
            compiling = finding + evaluation.compile_cost(request, raw_length)
            work = self._evaluator.compile
            plan = await call.compute(work, request, digest, graph, memory=compiling)
        return plan, digest

    def _job_memory(self, job: evaluation.Job, streaming: bool) -> tuple[int, int]:
        """The rows to evaluate at once, and what the call holds of the budget meanwhile
        (taken with its compute slot: ``CallScope.compute``)."""
        budget = self._state.budget
        # Row blocks only when the whole batch would not fit half the large calls' share (a
        # block costs a pass over every op group; ``large_calls``), so that one batch
        # evaluated in blocks for seconds leaves the ordinary calls their half of the
        # budget and other large calls half of their share; a block may hold more only
        # when the call's fixed part (its arrays, the results it keeps) leaves it less
        # than an eighth of the budget.
        blocks = (budget.total if budget.large is None else budget.large.total) // 2
        fixed = job.memory(0, streaming)
        block = job.block_rows(max(blocks, fixed + budget.total // 8), streaming)
        return block, job.memory(block, streaming)

    async def _unary_reply(self, call: CallScope) -> bytes:
        """Receive, evaluate and encode one Evaluate request: the reply message's bytes."""
        digest, prepared, _ = await self._prepare(call, unary=True)
        if isinstance(prepared, Answer):
            with call.span.step("encoding"):
                if prepared.quick_to_encode:
                    reply = evaluation.answer_reply(prepared, digest)
                else:
                    reply = await call.compute(_answer_reply, prepared, digest)
        else:
            block, memory = self._job_memory(prepared, streaming=False)
            with call.span.step("evaluating"):  # and encoding: one step on the executor
                work = self._evaluator.unary_reply
                reply = await call.compute(work, prepared, block, memory=memory)
        del prepared
        # The answer or job is gone; grpc copies the message while it is being sent, and
        # both copies stay resident until the reader takes it (a reader that never reads).
        await call.admit(2 * len(reply))
        await call.reserve_sending(len(reply))  # the estimate held, now what it is
        return reply

    async def Evaluate(self, _requests, context):
        async with CallScope("Evaluate", context, self._state) as call:
            await call.send(await self._unary_reply(call))

    async def Train(self, _requests, context):
        async with CallScope("Train", context, self._state) as stream:
            await train_stream.serve(stream, self._unary_reply)

    async def EvaluateStream(self, _requests, context):
        async with CallScope("EvaluateStream", context, self._state) as call:
            digest, prepared, chunk_size = await self._prepare(call)
            # The job (or answer) and the chunks are kept in ``held`` only, never in this
            # frame while a chunk is written, so that the call can let go of them when the
            # reader stops reading (``CallScope._let_go``).
            held = call.held = Held(prepared)
            del prepared
            if isinstance(held.work, Answer):
                nodes = evaluation.answer_chunk_nodes(held.work, chunk_size)
                chunks = evaluation.answer_chunk_bytes(nodes)
                await call.admit(evaluation.answer_bytes(held.work) + chunks)
                held.chunks = evaluation.answer_chunks(held.work, digest, chunk_size)
                await call.send_held()
                return
            block, memory = self._job_memory(held.work, streaming=True)
            sending = min(memory, held.work.sending_memory(block))
            work = self._evaluator.evaluate_block
            for first in range(0, held.work.rows, block):
                with call.span.step("evaluating"):
                    results = await call.compute(work, held.work, first, block, memory=memory)
                # While its chunks wait for the reader, the call holds the block's results,
                # not what evaluating them took: a slow reader keeps no memory from computing.
                await call.admit(sending)  # less than it held: never waits
                held.chunks = evaluation.block_chunks(held.work, first, results, chunk_size)
                del results
                await call.send_held()

    async def ListOps(self, _requests, context):
        async with CallScope("ListOps", context, self._state) as call:
            call.refuse_if_draining()
            await call.send(self._ops_reply)


def _decode(raw: bytes, _should_stop):
    return evaluation.decode(raw)


def _answer_reply(answer: Answer, digest: bytes, _should_stop) -> bytes:
    """A large selection's reply, encoded on a compute thread (``CallScope.compute``)."""
    return evaluation.answer_reply(answer, digest)


def _list_ops_reply(registry: dict[str, LoadedOp]) -> bytes:
    """The ListOps reply, made once: the ops do not change while the server runs."""
    return pb.ListOpsResponse(
        ops=[
            pb.OpInfo(
                name=name,
                arity=loaded.op.arity or 0,
                variadic=loaded.op.variadic,
                doc=loaded.op.doc,
                distribution=loaded.distribution,
                version=loaded.version,
                entry_point=loaded.entry_point,
                second_order=loaded.op.second is not None,
            )
            for name, loaded in sorted(registry.items())
        ],
        server_version=__version__,
    ).SerializeToString()


def handlers(servicer: GradientServicer) -> grpc.GenericRpcHandler:
    """The service's methods, bytes in and out, each started as soon as its call is."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            name: grpc.stream_stream_rpc_method_handler(getattr(servicer, name))
            for name in ("Evaluate", "EvaluateStream", "ListOps", "Train")
        },
    )
