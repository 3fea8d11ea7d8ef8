"""SIGTERM under load: in-flight calls finish within the grace period, new ones are refused."""

import os
import signal
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hardening import chain, wait_until
from servers import Served
from test_registry import install_fake_plugin

from gradserve.client import connect
from gradserve.v1 import gradserve_pb2 as pb

NAP_OP = """
    import time
    from pathlib import Path
    from gradserve.ops import Op

    def _forward(x):
        with open(Path(__file__).with_name("started"), "a") as started:
            started.write("call\\n")
        time.sleep(1.5)
        return x.copy()

    nap = Op("nap", 1, forward=_forward, backward=lambda g, y, x: (g,))
"""


@pytest.fixture
def nap_server(tmp_path, monkeypatch):
    install_fake_plugin(tmp_path, "nap-plugin", "nap", NAP_OP, {"nap": "nap"})
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    with Served("--grace", "20", "--trusted-plugins", "nap-plugin", "--workers", "1") as served:
        yield served, tmp_path / "started"


def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(nap_server):
    served, started = nap_server
    channel, stub = connect(f"127.0.0.1:{served.port}")
    request = pb.EvaluateRequest(graph=chain("nap", 1).proto())
    with channel, futures.ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(stub.Evaluate, request, timeout=30) for _ in range(4)]
        assert wait_until(lambda: started.exists() and len(started.read_text().split()) == 4, 10)
        served.process.send_signal(signal.SIGTERM)
        # Health says NOT_SERVING while the calls drain, before the port closes.
        probe = health_pb2_grpc.HealthStub(channel)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert wait_until(
            lambda: probe.Check(health_pb2.HealthCheckRequest(), timeout=5).status == not_serving,
            10,
        )
        assert not any(call.done() for call in calls)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListOps(pb.ListOpsRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert [len(call.result(timeout=30).node_ids) for call in calls] == [2, 2, 2, 2]
    assert served.process.wait(timeout=20) == 0
    served.wait_for("stopped")
    assert "Traceback" not in served.log
