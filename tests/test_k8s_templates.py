"""The Kubernetes pieces of docker/k8s/ and prefect.yaml, checked without a cluster: the GPU base job
template rendered with prefect-kubernetes' own code for each Kubernetes deployment's job variables, the
Job it gives checked against the strict Kubernetes API schema (kubernetes-validate), wrong job variables
refused with the field named; the RayCluster's pod templates checked as core/v1 PodTemplates (the
RayCluster resource itself is a KubeRay CRD, which has no schema here), and the image's pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from infra import k8s_job

REPO = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/flywheel:cuda"
ADDED_VARIABLES = {"gpu_count", "node_selector", "tolerations", "shm_size", "env_secret"}


@pytest.fixture(scope="module")
def template() -> dict:
    return k8s_job.load_template()


def deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def container(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]["containers"][0]


def test_the_template_is_prefect_kubernetes_default_plus_the_gpu_variables(template):
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    ours = template["variables"]["properties"]
    assert set(ours) == set(default["variables"]["properties"]) | ADDED_VARIABLES
    assert set(template["job_configuration"]) == set(default["job_configuration"])
    assert template["variables"]["required"] == ["image"] and "default" not in ours["image"]
    unchanged = set(default["variables"]["properties"]) - {"image", "cpu_request", "cpu_limit", "memory_request", "memory_limit"}
    assert all(ours[name] == default["variables"]["properties"][name] for name in unchanged)


@pytest.mark.parametrize("name", [d["name"] for d in deployments() if d["work_pool"]["name"] == k8s_job.KUBERNETES_POOL])
def test_each_kubernetes_deployment_renders_to_a_valid_gpu_job(template, name):
    written = k8s_job.kubernetes_deployments()[name]
    job_variables = k8s_job.with_environment(written, {"FLYWHEEL_IMAGE": IMAGE}, name)
    manifest = k8s_job.check_job(job_variables, template, name)
    main = container(manifest)
    pod = manifest["spec"]["template"]["spec"]
    assert main["image"] == IMAGE and main["resources"]["limits"]["nvidia.com/gpu"] == written["gpu_count"] > 0
    assert main["resources"]["requests"] == {"cpu": written["cpu_request"], "memory": written["memory_request"]}
    # the image's ENTRYPOINT is `flywheel`: the worker's args must run as a command of their own
    assert main["command"] == ["/usr/bin/env"] and main["args"] == ["prefect", "flow-run", "execute"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in main["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": written["shm_size"]}} in pod["volumes"]
    assert pod["nodeSelector"] == written["node_selector"] and pod["tolerations"] == written["tolerations"]
    assert main["envFrom"] == [{"secretRef": {"name": "flywheel-env"}}]
    assert any(e["name"] == "PREFECT__FLOW_RUN_ID" for e in main["env"])  # the worker's own env, as a list


def test_a_job_without_gpu_variables_takes_the_defaults(template):
    manifest = k8s_job.check_job({"image": IMAGE}, template)
    assert container(manifest)["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert manifest["spec"]["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] == "16Gi"


@pytest.mark.parametrize("job_variables, named", [
    ({"image": IMAGE, "gpu_count": "two"}, "gpu_count: 'two' is not of type 'integer'"),
    ({"gpu_count": 2}, "image is required"),
    ({"image": ""}, "image: '' should be non-empty"),
    ({"image": IMAGE, "gpu_count": -1}, "gpu_count: -1 is less than the minimum of 0"),
    ({"image": IMAGE, "shm_size": "lots"}, "shm_size: 'lots' is not a Kubernetes quantity"),
    ({"image": IMAGE, "memory_request": "64 GB"}, "memory_request: '64 GB' is not a Kubernetes quantity"),
    ({"image": IMAGE, "tolerations": [{"key": "gpu", "operator": "Maybe"}]}, "tolerations.0.operator: 'Maybe' is not one of"),
    ({"image": IMAGE, "node_selector": {"gpu": True}}, "node_selector.gpu: True is not of type 'string'"),
])
def test_wrong_job_variables_are_refused_naming_the_field(template, job_variables, named):
    with pytest.raises(k8s_job.JobVariablesError, match="^where: .*" + re.escape(named)):
        k8s_job.check_job(job_variables, template, "where")


def test_the_kubernetes_schema_refuses_what_the_api_would(template):
    manifest = k8s_job.render_job({"image": IMAGE}, template)
    # prefect-kubernetes requires these two in the pod spec, where the API has no such fields
    with pytest.raises(k8s_job.JobVariablesError, match="Additional properties .*'completions', 'parallelism'"):
        k8s_job.validate_manifest(manifest, "raw")
    for name in k8s_job.PREFECT_ONLY_POD_FIELDS:
        del manifest["spec"]["template"]["spec"][name]
    k8s_job.validate_manifest(manifest, "without them")
    container(manifest)["resources"]["limits"]["nvidia.com/gpu"] = [1]
    with pytest.raises(k8s_job.JobVariablesError, match=r"refuses spec\.template\.spec\.containers\.0\.resources\.limits\.nvidia\.com/gpu"):
        k8s_job.validate_manifest(manifest, "a list GPU count")


def test_an_unset_image_variable_is_named_before_anything_renders():
    with pytest.raises(k8s_job.JobVariablesError, match=r"'train-k8s'.*image is '\{\{ \$FLYWHEEL_IMAGE \}\}', and FLYWHEEL_IMAGE is not set"):
        k8s_job.check_deployments({})
    assert k8s_job.check_deployments({"FLYWHEEL_IMAGE": IMAGE}) == ["generate-k8s", "train-k8s"]


def test_deploy_check_runs_without_a_server(capsys, monkeypatch):
    from flows.cli import main

    monkeypatch.delenv("FLYWHEEL_IMAGE", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["deploy", "--check"]) == 2 and "FLYWHEEL_IMAGE is not set" in capsys.readouterr().err
    assert main(["deploy", "--check", "--image", IMAGE]) == 0
    assert "generate-k8s, train-k8s" in capsys.readouterr().out


def test_deployment_names_are_distinct_and_the_kubernetes_ones_are_opt_in():
    from flows.operate import deployment_names

    names = [d["name"] for d in deployments()]
    assert len(names) == len(set(names))
    assert deployment_names(kubernetes=False) == ["scheduled", "train-gpu", "generate-gpu"]
    assert deployment_names(kubernetes=True) == names
    for d in deployments():
        if d["work_pool"]["name"] == k8s_job.KUBERNETES_POOL:  # the code is the image's, not the deployer's checkout
            assert d["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/flywheel"}}]


def raycluster() -> dict:
    return yaml.safe_load((REPO / "docker" / "k8s" / "raycluster.yaml").read_text())


def test_the_raycluster_pod_templates_are_valid_core_pod_templates():
    cluster = raycluster()
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    groups = {"head": cluster["spec"]["headGroupSpec"], **{g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}}
    for name, group in groups.items():
        as_core = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"flywheel-ray-{name}"}, "template": group["template"]}
        k8s_job.validate_manifest(as_core, f"raycluster {name}")
        pod = group["template"]["spec"]
        main = pod["containers"][0]
        assert main["image"] == "flywheel:cuda" and main["envFrom"] == [{"secretRef": {"name": "flywheel-env"}}]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in main["volumeMounts"]
        assert pod["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert groups["head"]["rayStartParams"]["num-gpus"] == "0"
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == 8


def test_a_broken_raycluster_pod_template_is_refused():
    group = raycluster()["spec"]["workerGroupSpecs"][0]
    group["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "dshm", "mountPath": 5}]
    with pytest.raises(k8s_job.JobVariablesError, match=r"template\.spec\.containers\.0\.volumeMounts\.0\.mountPath"):
        k8s_job.validate_manifest({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": group["template"]}, "gpu")


def test_the_cuda_image_pins_vllm_and_the_clusters_ray_version():
    dockerfile = (REPO / "docker" / "Dockerfile.cuda").read_text()
    installs = " ".join(line for line in dockerfile.splitlines() if line.startswith("RUN pip install"))
    assert "vllm==0.29.0" in installs and not re.search(r"\bvllm(\s|$)", installs)
    ray_pin = re.search(r'"ray\[train\]==([0-9.]+)"', installs)
    assert ray_pin and ray_pin.group(1) == "2.60.0" == raycluster()["spec"]["rayVersion"]

