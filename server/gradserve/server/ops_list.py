"""``gradserve ops list``: a running server's ops, as a table or as JSON."""

import argparse
import json
import sys

import grpc

from gradserve import health_probe
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

COLUMNS = ("name", "arity", "second order", "distribution")


def describe(op: pb.OpInfo) -> dict:
    """One op as plain data: what ``--json`` prints, and the table's source."""
    return {
        "name": op.name,
        "arity": None if op.variadic else op.arity,
        "variadic": op.variadic,
        "second_order": op.second_order,
        "distribution": op.distribution,
        "version": op.version,
        "entry_point": op.entry_point,
        "doc": op.doc,
    }


def table(ops: list[dict]) -> str:
    """Aligned columns: name, arity ("any" for a variadic op), second order, distribution."""
    rows = [
        (
            op["name"],
            "any" if op["variadic"] else str(op["arity"]),
            "yes" if op["second_order"] else "no",
            f"{op['distribution']} {op['version']}".strip(),
        )
        for op in ops
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    header = "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()
    return "\n".join([header, *lines])


def run(args: argparse.Namespace) -> int:
    """Print the ops of the server at ``args.target``; exit 1 if it cannot be asked."""
    try:
        channel = health_probe.channel(args)
    except OSError as exc:
        print(f"cannot read a TLS file: {exc}", file=sys.stderr)
        return 2
    with channel:
        try:
            reply = pb_grpc.GradientServiceStub(channel).ListOps(
                pb.ListOpsRequest(), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"cannot list the ops of {args.target}: {_explain(exc)}", file=sys.stderr)
            return 1
    ops = [describe(op) for op in reply.ops]
    print(json.dumps(ops, indent=2) if args.json else table(ops))
    return 0


def _explain(exc: grpc.RpcError) -> str:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return "no gradserve server answers there (start one with 'gradserve serve')"
    return f"{exc.code().name}: {exc.details()}"
