"""deploy/haproxy, checked statically: HAProxy itself validates every servers file with the
shared config, and the hand-written health check is decoded as the gRPC call it claims to be.
tests/test_scale_out.py runs it for real."""

import re
import subprocess

import h2.config
import h2.connection
import h2.events
import kubernetes_validate
import pytest
import yaml
from dockerfile import ROOT
from grpc_health.v1 import health_pb2
from test_deploy_compose import SERVICES
from test_deploy_kubernetes import VERSION as KUBERNETES_VERSION

from bench.balancer import backend_config
from gradserve.client.structure import HEADER

HAPROXY_DIR = ROOT / "deploy" / "haproxy"
CONFIG = (HAPROXY_DIR / "haproxy.cfg").read_text()


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def one_line(keyword: str) -> str:
    [line] = [line.split(None, 2)[2] for line in CONFIG.splitlines() if keyword in line]
    return line.strip()


def test_the_health_check_sends_a_grpc_health_check_of_the_whole_server():
    sent = bytes.fromhex(one_line("tcp-check send-binary"))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    events = server.receive_data(sent)
    [request] = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    headers = {k.decode(): v.decode() for k, v in request.headers}
    assert headers[":method"] == "POST"
    assert headers[":path"] == "/grpc.health.v1.Health/Check"
    assert headers["content-type"] == "application/grpc"
    assert headers["te"] == "trailers"
    assert headers[":authority"]  # gRPC servers refuse a stream without one
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert body == grpc_frame(health_pb2.HealthCheckRequest().SerializeToString())


def test_the_check_passes_serving_only():
    def encoded(status) -> str:
        return grpc_frame(health_pb2.HealthCheckResponse(status=status).SerializeToString()).hex()

    serving = encoded(health_pb2.HealthCheckResponse.SERVING)
    not_serving = encoded(health_pb2.HealthCheckResponse.NOT_SERVING)
    waits_for = re.compile(one_line("tcp-check expect rbinary").split(None, 1)[1])
    assert waits_for.fullmatch(serving) and waits_for.fullmatch(not_serving)
    # The second expect decides on the bytes the first waited for (min-recv 0): a NOT_SERVING
    # answer fails the check at once, not when the server closes the connection.
    assert one_line("tcp-check expect min-recv").split() == ["min-recv", "0", "binary", serving]


def test_calls_are_hashed_on_the_structure_header_consistently():
    assert f"balance hdr({HEADER})" in CONFIG
    assert "hash-type consistent" in CONFIG


def haproxy_check(*files) -> subprocess.CompletedProcess:
    """``haproxy -c``: HAProxy's own parse of the config made of ``files``."""
    command = ["haproxy", "-c", *(arg for f in files for arg in ("-f", str(f)))]
    return subprocess.run(command, capture_output=True, text=True)


needs_haproxy = pytest.mark.requires_tool("haproxy")


@needs_haproxy
@pytest.mark.parametrize("where", ["compose", "kubernetes", "loopback"])
def test_haproxy_accepts_the_config(where, tmp_path):
    servers = tmp_path / "servers.cfg"
    if where == "compose":
        servers = HAPROXY_DIR / "servers-compose.cfg"
    elif where == "kubernetes":
        servers.write_text(K8S_OBJECTS["ConfigMap", "gradserve-haproxy"]["data"]["servers.cfg"])
    else:
        servers.write_text(backend_config(["127.0.0.1:1", "127.0.0.1:2"]))
    checked = haproxy_check(HAPROXY_DIR / "haproxy.cfg", servers)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "WARNING" not in checked.stdout + checked.stderr


KUBERNETES = ROOT / "deploy" / "kubernetes"
K8S_OBJECTS = {
    (doc["kind"], doc["metadata"]["name"]): doc
    for doc in yaml.safe_load_all((KUBERNETES / "haproxy" / "haproxy.yaml").read_text())
}


@pytest.mark.parametrize("key", sorted(K8S_OBJECTS), ids=lambda key: key[0])
def test_the_kubernetes_manifests_are_valid(key):
    kubernetes_validate.validate(K8S_OBJECTS[key], KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_config_is_the_shared_one_aimed_at_the_headless_service():
    data = K8S_OBJECTS["ConfigMap", "gradserve-haproxy"]["data"]
    assert data["haproxy.cfg"] == CONFIG
    server_objects = {
        (doc["kind"], doc["metadata"]["name"]): doc
        for doc in yaml.safe_load_all((KUBERNETES / "gradserve.yaml").read_text())
    }
    service = server_objects["Service", "gradserve"]
    assert service["spec"]["clusterIP"] == "None"
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert f" gradserve.default.svc.cluster.local:{grpc_port} " in data["servers.cfg"]


def test_the_balancers_mount_both_files_and_publish_the_bound_port():
    pod = K8S_OBJECTS["Deployment", "gradserve-haproxy"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    files = [arg for arg in container["args"] if arg.startswith(mount["mountPath"])]
    assert [name.rpartition("/")[2] for name in files] == ["haproxy.cfg", "servers.cfg"]
    env = {item["name"]: item["value"] for item in container["env"]}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert env["GRADSERVE_LB_BIND"] == f":{ports['grpc']}"
    assert env["GRADSERVE_LB_METRICS_BIND"] == f":{ports['metrics']}"
    compose = SERVICES["haproxy"]
    (volume,) = compose["volumes"]
    source, target = volume.split(":")[:2]
    assert (ROOT / source).resolve() == HAPROXY_DIR
    named = [arg.rpartition("/")[2] for arg in compose["command"] if arg.startswith(target)]
    assert named == ["haproxy.cfg", "servers-compose.cfg"]
    assert all((HAPROXY_DIR / name).is_file() for name in named)
    published = {port.split(":")[-1] for port in compose["ports"]}
    assert published == {compose["environment"][key].lstrip(":") for key in compose["environment"]}
