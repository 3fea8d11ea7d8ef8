"""The compose profile "observability": the OpenTelemetry Collector and Prometheus configs,
checked statically (neither runs here) against what they must do for gradserve: receive the
servers' OTLP traces where the servers send them, use only components they define, and
scrape every server's metrics endpoint."""

import pytest
import yaml
from dockerfile import ROOT
from test_deploy_compose import SERVICES, interpolated

from gradserve.server.service import tracing

DEPLOY = ROOT / "deploy"
COLLECTOR = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
PROFILE = "observability"


def host_port(address: str) -> tuple[str, int]:
    address = address.split("://")[-1]
    host, _, port = address.rpartition(":")
    return host, int(port)


def test_the_profile_runs_the_collector_and_prometheus_with_these_configs():
    mounts = {
        "otel-collector": "./deploy/otel-collector.yaml:/etc/otelcol/config.yaml:ro",
        "prometheus": "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
    }
    for name, mount in mounts.items():
        service = SERVICES[name]
        assert service["profiles"] == [PROFILE]
        assert mount in service["volumes"]
        path = mount.split(":")[1]
        assert any(path in argument for argument in service["command"])


def test_the_collectors_pipeline_uses_only_components_it_defines():
    pipelines = COLLECTOR["service"]["pipelines"]
    assert set(pipelines) == {"traces"}
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            assert pipeline.get(kind), kind
            assert set(pipeline[kind]) <= set(COLLECTOR[kind]), kind
    for kind in ("receivers", "processors", "exporters"):  # nothing defined and left unused
        used = {name for pipeline in pipelines.values() for name in pipeline.get(kind, [])}
        assert used == set(COLLECTOR[kind]), kind


def test_the_servers_send_their_traces_to_the_collector_when_asked():
    grpc_endpoint = COLLECTOR["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    _, port = host_port(grpc_endpoint)
    assert str(port) in SERVICES["otel-collector"]["expose"]
    for name in ("gradserve", "gradserve-replica"):
        env = SERVICES[name]["environment"]
        assert host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otel-collector", port)
        assert env["OTEL_TRACES_EXPORTER"] == "${GRADSERVE_TRACES:-none}"
        # Off by default, on with GRADSERVE_TRACES=otlp (the README's command).
        assert not tracing.wanted(interpolated(env))
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("GRADSERVE_TRACES", "otlp")
            assert tracing.wanted(interpolated(env))


def test_the_collector_forwards_to_jaeger_in_the_profile():
    host, port = host_port(COLLECTOR["exporters"]["otlp/jaeger"]["endpoint"])
    assert SERVICES[host]["profiles"] == [PROFILE]
    assert str(port) in SERVICES[host]["expose"]
    assert SERVICES[host]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_prometheus_scrapes_every_servers_metrics_endpoint():
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    assert len(jobs) == len(PROMETHEUS["scrape_configs"])  # names are unique
    single = SERVICES["gradserve"]["environment"]["GRADSERVE_METRICS_PORT"]
    (static,) = jobs["gradserve"]["static_configs"]
    assert static["targets"] == [f"gradserve:{single}"]
    # The replicas: every address the service name resolves to, as Envoy finds them.
    (dns,) = jobs["gradserve-replica"]["dns_sd_configs"]
    replica = SERVICES["gradserve-replica"]["environment"]["GRADSERVE_METRICS_PORT"]
    assert dns == {"names": ["gradserve-replica"], "type": "A", "port": int(replica)}
    for job in jobs.values():
        assert set(job) <= {"job_name", "static_configs", "dns_sd_configs"}
    assert set(PROMETHEUS) == {"global", "scrape_configs"}
