"""The Kubernetes GPU job a Prefect Kubernetes work pool runs for a deployment: its job variables checked
against the base job template's ``variables`` schema (``docker/k8s/gpu-job-template.json``), the template
rendered with them by prefect-kubernetes' own code, and the resulting Job checked against the
Kubernetes API schema (kubernetes-validate, strict: an unknown field is an error).

``flywheel deploy --check`` runs it on every deployment of ``prefect.yaml`` whose work pool is
``KUBERNETES_POOL``; ``flywheel deploy --kubernetes`` runs it before deploying them. Nothing here
needs a cluster, a Prefect server or a network.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO = Path(__file__).resolve().parents[1]
JOB_TEMPLATE = REPO / "docker" / "k8s" / "gpu-job-template.json"
PREFECT_FILE = REPO / "prefect.yaml"
KUBERNETES_POOL = "gpu-k8s"  # the work pool the template is made for: `prefect work-pool create gpu-k8s --type kubernetes ...`
KUBERNETES_VERSION = "1.33"  # the API schema a rendered Job is checked against (kubernetes-validate ships 1.25 to 1.37)
# prefect-kubernetes insists on these two in the *pod* spec (its manifest check refuses a template
# without them), where the Kubernetes API does not define them: the API server drops them as unknown
# fields (with a warning) when it creates the Job. The strict schema check leaves them out for the same reason.
PREFECT_ONLY_POD_FIELDS = ("completions", "parallelism")
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$"  # the template's pattern for sizes and CPU counts


class JobVariablesError(ValueError):
    """Job variables the template refuses, or a rendered Job the Kubernetes schema refuses; the message names the field."""


def load_template(path: Path = JOB_TEMPLATE) -> dict:
    return json.loads(Path(path).read_text())


def check_job_variables(job_variables: dict[str, Any], template: dict, where: str = "job_variables") -> None:
    """Refuse job variables the template's ``variables`` schema does not allow, naming each field and why
    (a missing required image, a GPU count that is not an integer, an unknown toleration key, ...)."""
    import jsonschema

    validator = jsonschema.Draft7Validator(template["variables"])
    errors = sorted(validator.iter_errors(job_variables), key=lambda e: list(e.absolute_path))
    if errors:
        raise JobVariablesError(f"{where}: " + "; ".join(_describe(error) for error in errors))


def _describe(error) -> str:
    field = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "anyOf" and error.context:  # e.g. a quantity or null: say what is wrong with the non-null form
        error = next((sub for sub in error.context if sub.validator != "type"), error)
    if error.validator == "required":  # the missing field is in the message, not the path
        return f"{error.message.split()[0].strip(chr(39))} is required (no default)"
    if error.validator == "pattern" and error.validator_value == QUANTITY_PATTERN:
        return f"{field}: {error.instance!r} is not a Kubernetes quantity (such as 16Gi, 512Mi, 8 or 500m)"
    return f"{field or '(top level)'}: {error.message}"


def render_job(job_variables: dict[str, Any], template: dict, flow_run_name: str = "check-run") -> dict:
    """The Job manifest the Kubernetes worker would create for a flow run of a deployment with these job
    variables. The worker's ``from_template_and_values`` does the same (defaults, then the deployment's
    values, through ``apply_values``) and then resolves Prefect block and variable references against the
    API; these templates use none, so that step, which needs a server, is left out."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    values = KubernetesWorkerJobConfiguration._get_base_config_defaults(template["variables"].get("properties", {}))
    values.update(copy.deepcopy(job_variables))
    populated = apply_values(template=copy.deepcopy(template["job_configuration"]), values=values)
    configuration = KubernetesWorkerJobConfiguration(**populated)
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name=flow_run_name))
    return configuration.job_manifest


def without_nulls(value: Any) -> Any:
    """The manifest as the API server reads it: a null field is an absent one (the worker sends the
    unset optional variables, e.g. a CPU limit, as nulls)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def validate_manifest(manifest: dict, where: str, version: str = KUBERNETES_VERSION) -> None:
    """Check a core Kubernetes object (a Job, a PodTemplate, ...) against the strict API schema of ``version``."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(without_nulls(manifest), version, strict=True)
    except kubernetes_validate.ValidationError as err:
        field = ".".join(str(part) for part in err.absolute_path) or "(top level)"
        raise JobVariablesError(f"{where}: the Kubernetes {err.version} schema refuses {field}: {err.message}") from None


def check_job(job_variables: dict[str, Any], template: dict, where: str = "job_variables") -> dict:
    """The rendered Job for these job variables, after checking both; JobVariablesError names what is wrong."""
    check_job_variables(job_variables, template, where)
    manifest = render_job(job_variables, template)
    for_schema = copy.deepcopy(manifest)
    pod_spec = for_schema["spec"]["template"]["spec"]
    for name in PREFECT_ONLY_POD_FIELDS:
        pod_spec.pop(name, None)
    validate_manifest(for_schema, f"{where} (rendered Job)")
    return manifest


def kubernetes_deployments(prefect_file: Path = PREFECT_FILE) -> dict[str, dict]:
    """The deployments of ``prefect_file`` on the Kubernetes work pool: name -> their job variables as
    written (``{{ $VAR }}`` placeholders unresolved)."""
    deployments = yaml.safe_load(Path(prefect_file).read_text())["deployments"]
    return {d["name"]: d["work_pool"].get("job_variables", {}) for d in deployments if d["work_pool"]["name"] == KUBERNETES_POOL}


def with_environment(job_variables: dict[str, Any], environ: dict[str, str], where: str) -> dict[str, Any]:
    """The job variables as `prefect deploy` stores them: each ``{{ $VAR }}`` replaced by the variable's
    value in ``environ``. An unset one is an error naming the field and the variable (prefect deploy
    would store an empty string)."""
    from prefect.utilities.templating import PlaceholderType, find_placeholders

    def resolve(value: Any, field: str) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v, f"{field}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{field}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        for placeholder in find_placeholders(value):
            if placeholder.type is PlaceholderType.ENV_VAR:
                name = placeholder.name.removeprefix("$")
                if not environ.get(name):
                    raise JobVariablesError(f"{where}: {field.lstrip('.')} is {value!r}, and {name} is not set")
                value = value.replace(placeholder.full_match, environ[name])
        return value

    return resolve(job_variables, "")


def check_deployments(environ: Mapping[str, str], prefect_file: Path = PREFECT_FILE, template_file: Path = JOB_TEMPLATE) -> list[str]:
    """Check every Kubernetes deployment of ``prefect_file`` against the template, its ``{{ $VAR }}``
    placeholders taken from ``environ`` (as `prefect deploy` would); their names."""
    template = load_template(template_file)
    found = kubernetes_deployments(prefect_file)
    if not found:
        raise JobVariablesError(f"{prefect_file}: no deployment uses the work pool {KUBERNETES_POOL!r}")
    for name, job_variables in found.items():
        where = f"{Path(prefect_file).name}: deployment {name!r}: work_pool.job_variables"
        check_job(with_environment(job_variables, dict(environ), where), template, where)
    return sorted(found)
