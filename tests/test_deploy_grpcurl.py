"""docs/clients/grpcurl.md's request is valid: grpcurl sends its -d JSON as protobuf JSON, which
json_format parses the same way. (grpcurl itself is not in any registry we can reach.)"""

import math
import re

import docs_pages
from google.protobuf import json_format

from gradserve.v1 import gradserve_pb2 as pb


def test_the_docs_grpcurl_request_gets_the_neuron_gradients(stub):
    (block,) = docs_pages.code("docs/clients/grpcurl.md", "sh")
    body = re.search(r"grpcurl -plaintext -d '(\{.*?\})' ", block, re.S).group(1)
    request = json_format.Parse(body, pb.EvaluateRequest())
    reply = stub.Evaluate(request)
    x1, x2, w1, w2, b = request.graph.leaf_values
    dn = 1 - math.tanh(x1 * w1 + x2 * w2 + b) ** 2
    expected = [w1 * dn, w2 * dn, x1 * dn, x2 * dn, dn]  # d tanh(x1*w1 + x2*w2 + b) / dleaf
    assert list(reply.node_ids) == [0, 1, 2, 3, 4]
    assert all(
        math.isclose(g, e, abs_tol=1e-12) for g, e in zip(reply.grads, expected, strict=True)
    )
