"""deploy/envoy.yaml, checked statically: no registry ships Envoy, so it cannot run here.

The config is parsed against Envoy's data-plane API (the envoy-data-plane package: every
field name, enum value, duration and typed extension), then tied to docker-compose.yml and
to what gRPC needs from a proxy. What only a running Envoy checks (protoc-gen-validate
constraints, DNS, that the extensions are compiled in) is left to `envoy --mode validate`.
"""

import copy
import importlib
import warnings

import pytest
import yaml
from dockerfile import ROOT
from test_deploy_compose import SERVICES

from gradserve.client.structure import HEADER

with warnings.catch_warnings():  # its generated validators use a form pydantic deprecates
    warnings.simplefilter("ignore", DeprecationWarning)
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

ENVOY = yaml.safe_load((ROOT / "deploy" / "envoy.yaml").read_text())
TYPES = "type.googleapis.com/envoy.extensions."


def parse_bootstrap(config: dict) -> Bootstrap:
    """Envoy's Bootstrap message from the config; unknown fields or values raise."""
    pending = [config]
    while pending:  # import the module of every typed extension (each "@type") it names
        item = pending.pop()
        values = item.values() if isinstance(item, dict) else item
        pending.extend(value for value in values if isinstance(value, dict | list))
        if isinstance(item, dict) and "@type" in item:
            package = item["@type"].rpartition("/")[2].rpartition(".")[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                importlib.import_module("envoy_data_plane." + package)
    return Bootstrap.from_dict(config)


def test_the_config_matches_envoys_api():
    bootstrap = parse_bootstrap(ENVOY)
    (listener,) = bootstrap.static_resources.listeners
    manager = listener.filter_chains[0].filters[0].typed_config.unpack()
    assert type(manager).__name__ == "HttpConnectionManager"


@pytest.mark.parametrize(
    "path, key",
    [
        (["static_resources", "clusters", 0], "lb_polcy"),  # misspelt field
        (
            ["static_resources", "listeners", 0, "filter_chains", 0, "filters", 0, "typed_config"],
            "stat_prefx",
        ),  # misspelt inside a typed extension
    ],
)
def test_the_api_check_catches_a_misspelt_field(path, key):
    broken = copy.deepcopy(ENVOY)
    node = broken
    for step in path:
        node = node[step]
    node[key] = "x"
    with pytest.raises(KeyError, match=key):
        parse_bootstrap(broken)


def only(items: list) -> dict:
    assert len(items) == 1
    return items[0]


def test_the_compose_envoy_service_mounts_this_config():
    mounts = [volume.split(":") for volume in SERVICES["envoy"]["volumes"]]
    assert ["./deploy/envoy.yaml", "/etc/envoy/envoy.yaml", "ro"] in mounts
    assert SERVICES["envoy"]["command"][-1] == "/etc/envoy/envoy.yaml"


def test_the_listener_is_the_published_port_and_routes_every_call_to_the_replicas():
    listener = only(ENVOY["static_resources"]["listeners"])
    port = listener["address"]["socket_address"]["port_value"]
    assert f"{port}:{port}" in SERVICES["envoy"]["ports"]
    manager = only(only(listener["filter_chains"])["filters"])["typed_config"]
    assert manager["@type"].startswith(TYPES + "filters.network.http_connection_manager.v3.")
    route = only(only(manager["route_config"]["virtual_hosts"])["routes"])
    assert route["match"] == {"prefix": "/"}
    assert route["route"]["cluster"] == only(ENVOY["static_resources"]["clusters"])["name"]
    # Envoy's default 15 s route timeout would cut long evaluations and streams.
    assert route["route"]["timeout"] == "0s"
    assert only(manager["http_filters"])["name"] == "envoy.filters.http.router"


def test_the_cluster_balances_calls_over_every_replica_with_http2_and_grpc_health():
    cluster = only(ENVOY["static_resources"]["clusters"])
    assert cluster["type"] == "STRICT_DNS"  # one upstream host per replica address
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    endpoint = only(only(cluster["load_assignment"]["endpoints"])["lb_endpoints"])
    address = endpoint["endpoint"]["address"]["socket_address"]
    replica = SERVICES["gradserve-replica"]
    assert address["address"] == "gradserve-replica"
    assert str(address["port_value"]) == replica["environment"]["GRADSERVE_PORT"]
    assert replica["deploy"]["replicas"] > 1
    assert "grpc_health_check" in only(cluster["health_checks"])


def test_calls_for_one_structure_reach_one_replica_by_consistent_hashing():
    """The route hashes the header the SDK sends (README: "Plans stay where they were
    compiled"); the cluster places replicas on a hash ring, so that a structure keeps its
    replica and only about 1/N of them move when a replica comes or goes."""
    listener = only(ENVOY["static_resources"]["listeners"])
    manager = only(only(listener["filter_chains"])["filters"])["typed_config"]
    route = only(only(manager["route_config"]["virtual_hosts"])["routes"])["route"]
    policy = only(route["hash_policy"])
    assert policy == {"header": {"header_name": HEADER}}
    cluster = only(ENVOY["static_resources"]["clusters"])
    assert cluster["lb_policy"] in ("RING_HASH", "MAGLEV")
