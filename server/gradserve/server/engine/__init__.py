"""The evaluation engine: compile a graph into a plan, run it forward and backward.

It imports no grpc: the gRPC edge (``gradserve.server.service``) calls it, never the reverse.
"""
