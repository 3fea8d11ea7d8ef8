"""deploy/kubernetes/: every manifest is valid against Kubernetes' own schemas (the
kubernetes-validate package bundles them: no cluster, no network), and the objects fit
together: probes, grace, selectors, the autoscaler's target, Envoy's config."""

import copy

import kubernetes_validate
import pytest
import yaml
from dockerfile import ROOT
from test_deploy_compose import SERVICES
from test_deploy_envoy import ENVOY, parse_bootstrap

from gradserve.server.cli import build_parser

KUBERNETES = ROOT / "deploy" / "kubernetes"
VERSION = "1.30.0"  # the oldest Kubernetes these manifests promise to work on
MANIFESTS = [
    (path.name, document)
    for path in sorted(KUBERNETES.glob("*.yaml"))
    for document in yaml.safe_load_all(path.read_text())
]
OBJECTS = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in MANIFESTS}


def test_there_is_every_object_the_readme_names():
    assert set(OBJECTS) == {
        ("Deployment", "gradserve"),
        ("Service", "gradserve"),
        ("HorizontalPodAutoscaler", "gradserve"),
        ("PodDisruptionBudget", "gradserve"),
        ("ConfigMap", "gradserve-envoy"),
        ("Deployment", "gradserve-envoy"),
        ("Service", "gradserve-envoy"),
        ("PodDisruptionBudget", "gradserve-envoy"),
    }


@pytest.mark.parametrize(
    ("file", "manifest"), MANIFESTS, ids=[f"{f}:{m['kind']}" for f, m in MANIFESTS]
)
def test_each_manifest_is_valid_against_the_kubernetes_schema(file, manifest):
    kubernetes_validate.validate(manifest, VERSION, strict=True)


def test_the_validator_catches_a_misspelt_field():
    broken = copy.deepcopy(OBJECTS["Deployment", "gradserve"])
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 15
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def server_container() -> dict:
    (container,) = OBJECTS["Deployment", "gradserve"]["spec"]["template"]["spec"]["containers"]
    return container


def environment() -> dict[str, str]:
    return {item["name"]: item["value"] for item in server_container()["env"]}


def test_the_probes_are_grpc_health_checks_on_the_serving_port():
    container, env = server_container(), environment()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["grpc"] == int(env["GRADSERVE_PORT"])
    assert ports["metrics"] == int(env["GRADSERVE_METRICS_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": ports["grpc"]}
    assert env["GRADSERVE_HOST"] == "0.0.0.0"


def test_pods_outlast_the_servers_grace():
    pod = OBJECTS["Deployment", "gradserve"]["spec"]["template"]["spec"]
    env = environment()
    drain = float(env["GRADSERVE_DRAIN_DELAY"]) + float(env["GRADSERVE_GRACE"])
    assert pod["terminationGracePeriodSeconds"] > drain
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user


def test_every_environment_variable_is_a_server_option():
    options = set(vars(build_parser().parse_args(["serve"]))) - {"command", "run"}
    names = {"GRADSERVE_" + option.upper() for option in options}
    server_variables = {name for name in environment() if name.startswith("GRADSERVE_")}
    assert server_variables <= names
    assert server_variables <= set(SERVICES["gradserve"]["environment"])


def test_the_service_autoscaler_and_budget_select_the_deployments_pods():
    deployment = OBJECTS["Deployment", "gradserve"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = OBJECTS["Service", "gradserve"]["spec"]
    assert service["clusterIP"] == "None"  # headless: DNS names every pod
    assert service["selector"].items() <= labels.items()
    budget = OBJECTS["PodDisruptionBudget", "gradserve"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    target = OBJECTS["HorizontalPodAutoscaler", "gradserve"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "gradserve")
    assert OBJECTS["HorizontalPodAutoscaler", "gradserve"]["spec"]["minReplicas"] > 1


def test_envoys_config_is_the_compose_one_aimed_at_the_headless_service():
    config = yaml.safe_load(OBJECTS["ConfigMap", "gradserve-envoy"]["data"]["envoy.yaml"])
    parse_bootstrap(config)  # against Envoy's API, as tests/test_deploy_envoy.py does
    (cluster,) = config["static_resources"]["clusters"]
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = endpoints["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    service = OBJECTS["Service", "gradserve"]
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert address == {"address": service["metadata"]["name"], "port_value": grpc_port}
    compose = copy.deepcopy(ENVOY)
    compose["static_resources"]["clusters"][0]["load_assignment"] = cluster["load_assignment"]
    assert config == compose


def test_envoy_mounts_its_config_and_is_reached_through_its_service():
    pod = OBJECTS["Deployment", "gradserve-envoy"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == "gradserve-envoy"
    (mount,) = container["volumeMounts"]
    assert container["args"][-1] == mount["mountPath"] + "/envoy.yaml"
    listener = ENVOY["static_resources"]["listeners"][0]["address"]["socket_address"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["grpc"] == listener["port_value"]
    (service_port,) = OBJECTS["Service", "gradserve-envoy"]["spec"]["ports"]
    assert service_port["targetPort"] == "grpc"
