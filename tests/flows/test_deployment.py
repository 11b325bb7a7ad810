"""prefect.yaml and deploy/: the deployments, pool templates and image a team uses to run featup on work pools.

The fast tests read the files (templates render, parameters fit the flows, no inline secrets); the slow
one does what docs/deploy.md tells a user to do, against a real `prefect server`: create the pools from
deploy/process-pool.json, `prefect --no-prompt deploy --all`, start a worker, trigger an evaluation
through the REST API the UI uses, and find the report on the run as artifacts.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TEMPLATES = ("process-pool.json", "docker-pool.json", "kubernetes-pool.json")
PLACEHOLDER = re.compile(r"\{\{\s*([^}\s]+)\s*\}\}")
# keys whose value must never be written out in prefect.yaml: only a {{ prefect.blocks... }} / {{ $ENV }} reference
SECRET_KEY = re.compile(r"(password|token|api_key|secret_key|access_key|credentials)", re.IGNORECASE)


def _prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def _template(name: str) -> dict[str, Any]:
    return json.loads((DEPLOY / name).read_text())


def _strings(obj: Any, path: str = ""):
    """(path, key, value) for every string value in a nested structure."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str):
                yield f"{path}.{key}", str(key), value
            else:
                yield from _strings(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            if isinstance(value, str):
                yield f"{path}[{i}]", "", value
            else:
                yield from _strings(value, f"{path}[{i}]")


def _defaults(template: dict[str, Any]) -> dict[str, Any]:
    return {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}


def _render(template: dict[str, Any], **values: Any) -> dict[str, Any]:
    """The job configuration a worker builds from the template, the variables' defaults and ``values``."""
    from prefect.utilities.templating import apply_values

    return apply_values(template["job_configuration"], {**_defaults(template), **values})


def _flow(entrypoint: str):
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


# --- the files themselves -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATES)
def test_job_template_uses_only_defined_variables_and_its_defaults_validate(name):
    import jsonschema

    template = _template(name)
    assert set(template) == {"job_configuration", "variables"}
    variables = template["variables"]
    used = {m for _, _, s in _strings(template["job_configuration"]) for m in PLACEHOLDER.findall(s)}
    used = {u for u in used if not u.startswith(("prefect.", "$", "ctx."))}
    assert used, "a job configuration with no variables cannot be configured per deployment"
    assert used <= set(variables["properties"]), f"undefined variables: {used - set(variables['properties'])}"
    jsonschema.validate(_defaults(template), variables)


def test_process_template_is_prefects_own_plus_featup_env_defaults():
    """Same variables and job configuration as the installed Prefect's process template: nothing drifted."""
    from prefect.workers.process import ProcessWorker

    ours = _template("process-pool.json")
    env = ours["variables"]["properties"]["env"]
    assert env["default"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    stock = ProcessWorker.get_default_base_job_template()
    assert ours["job_configuration"] == stock["job_configuration"]
    assert set(ours["variables"]["properties"]) == set(stock["variables"]["properties"])
    for key, schema in stock["variables"]["properties"].items():
        mine = {k: v for k, v in ours["variables"]["properties"][key].items() if k not in ("default", "description")}
        assert mine == {k: v for k, v in schema.items() if k not in ("default", "description")}, key


def test_kubernetes_job_requests_gpus_through_a_variable():
    template = _template("kubernetes-pool.json")
    for values, gpus in (({}, 1), ({"gpu_count": 4}, 4)):
        manifest = _render(template, **values)["job_manifest"]
        # the shape prefect-kubernetes insists on
        assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
        pod = manifest["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        container = pod["containers"][0]
        assert container["name"] == "prefect-job"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert container["image"] == _defaults(template)["image"]


def test_container_templates_run_the_image_built_by_the_dockerfile():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.MULTILINE)[-1]
    assert re.search(r"TORCH_CUDA_ARCH_LIST", dockerfile) and "./kernels" in dockerfile
    for name in ("docker-pool.json", "kubernetes-pool.json"):
        template = _template(name)
        env = _defaults(template)["env"]
        # the pull steps of prefect.yaml change into the checkout baked into the image
        assert env["FEATUP_CHECKOUT"] == workdir, name
        assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    docker = _render(_template("docker-pool.json"))
    requests = docker["container_create_kwargs"]["device_requests"]
    assert requests and requests[0]["capabilities"] == [["gpu"]]


def test_prefect_yaml_deploys_every_flow_of_the_cli_with_parameters_it_accepts():
    from featup_flows.cli import FLOWS

    config = _prefect_yaml()
    deployed = {d["entrypoint"] for d in config["deployments"]}
    # featup_flows is the installed name of the flows/ folder, which entrypoints name by path.
    assert deployed == {f"flows/{module.split('.')[-1]}.py:{name}" for module, name in FLOWS.values()}
    names = [d["name"] for d in config["deployments"]]
    # unique on their own, so `prefect deploy -n NAME` picks one; named by purpose, ending in their pool
    assert len(set(names)) == len(names), f"two deployments named alike: {names}"
    for deployment in config["deployments"]:
        pool = deployment["work_pool"]["name"]
        assert deployment["name"].endswith(f"-{pool}") or deployment.get("schedules"), deployment["name"]
    for deployment in config["deployments"]:
        flow = _flow(deployment["entrypoint"])
        params = dict(deployment.get("parameters") or {})
        signature = inspect.signature(flow.fn).parameters
        assert set(params) <= set(signature), f"{deployment['name']}: unknown {set(params) - set(signature)}"
        assert deployment["work_pool"]["name"] in ("gpu", "cpu")
        required = {k: "x" for k, p in signature.items() if p.default is inspect.Parameter.empty}
        if deployment.get("schedules"):
            # a scheduled run has no form to fill in: every required parameter must be there
            assert set(required) <= set(params), f"{deployment['name']}: missing {set(required) - set(params)}"
        flow.validate_parameters({**required, **params})  # types and Literal choices


def test_run_forms_offer_choices_and_limits():
    """What the UI's form shows for evaluate: upsamplers as a choice, image_size a multiple of 32 (the CAM head's
    stride), and the on-demand CPU deployment runs with no S3 at all."""
    from featup.upsamplers import list_upsamplers
    from featup_flows.evaluate import evaluate

    form = evaluate.parameters.model_dump()["properties"]
    choices = form["upsamplers"]["items"]["enum"]  # in step with the registry: a new upsampler is a new choice
    assert choices[0] == "lowres" and sorted(choices[1:]) == list_upsamplers()
    assert form["upsamplers"]["minItems"] == 1
    assert (form["image_size"]["multipleOf"], form["image_size"]["minimum"]) == (32, 32)
    assert form["probe_protocol"]["enum"] == ["own", "lowres", "full"]
    local = next(d for d in _prefect_yaml()["deployments"] if d["name"] == "report-cpu")
    assert local["work_pool"]["name"] == "cpu" and "s3://" not in json.dumps(local["parameters"])


def test_prefect_yaml_schedules_are_inactive_and_secrets_never_inline():
    config = _prefect_yaml()
    schedules = [s for d in config["deployments"] for s in d.get("schedules") or []]
    assert schedules and all(s.get("active") is False for s in schedules)
    for where, key, value in _strings(config):
        if SECRET_KEY.search(key) or SECRET_KEY.search(value):
            assert re.fullmatch(r"\{\{\s*(prefect\.blocks\.|\$)[^}]+\}\}", value), f"inline secret at {where}"


def test_prefect_yaml_pull_steps_call_prefect_steps_with_their_arguments():
    config = _prefect_yaml()
    pulls = [*config["definitions"]["pull"].values(), *(d["pull"] for d in config["deployments"])]
    for steps in pulls:
        for step in steps:
            (fqn, inputs), = step.items()
            module, name = fqn.rsplit(".", 1)
            fn = getattr(importlib.import_module(module), name)
            arguments = {k: v for k, v in inputs.items() if k not in ("id", "requires")}
            inspect.signature(fn).bind(**arguments)
    first = config["deployments"][0]["pull"][0]
    assert first == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $FEATUP_CHECKOUT }}"}}


# --- a real server, pools, deploy, worker, a run triggered as from the UI ---------------------------------


def _tiny_benchmark(root: Path) -> dict[str, str]:
    """A segmentation set (Fashion-MNIST mosaics) and photos for CAMs, at 64 px: seconds to evaluate."""
    from featup.data import ingest

    seg = ingest("fashion_mosaics", "-", str(root / "mosaics"), n=8, size=64, max_count=4, progress=False)
    cam = ingest("photos", "-", str(root / "photos"), size=64, max_count=4, progress=False)
    assert seg.num_samples == 8 and cam.num_samples >= 2
    return {"seg_shards": str(root / "mosaics"), "cam_shards": str(root / "photos")}


def _artifacts(server, flow_run_id: str) -> dict[str, dict[str, Any]]:
    with server.client() as api:
        found = api.post("/artifacts/filter",
                         json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).raise_for_status().json()
    return {a["key"]: a for a in found if a["key"]}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kind"), [("docker-pool.json", "docker"), ("kubernetes-pool.json", "kubernetes")])
def test_container_pool_templates_are_accepted_by_the_server(prefect_server, name, kind):
    """The server validates a pool's template as the UI's "create work pool" does (no worker package needed)."""
    template = _template(name)
    with prefect_server.client() as api:
        created = api.post("/work_pools/", json={"name": f"{kind}-gpu", "type": kind, "base_job_template": template})
        assert created.status_code == 201, created.text
        assert api.get(f"/work_pools/{kind}-gpu").json()["base_job_template"] == template
        # and it does reject a template that uses an undefined variable, so the check above means something
        template["job_configuration"]["image"] = "{{ no_such_variable }}"
        rejected = api.post("/work_pools/", json={"name": f"{kind}-bad", "type": kind, "base_job_template": template})
        assert rejected.status_code == 422 and "no_such_variable" in rejected.text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_deployment_runs_on_a_worker_when_triggered_from_the_ui(prefect_server, work_pools, deployments,
                                                                         workers, tmp_path):
    server = workers
    # the pools carry the template's featup defaults
    env = work_pools["gpu"]["base_job_template"]["variables"]["properties"]["env"]["default"]
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"

    # every deployment of prefect.yaml is there, on its pool, with its flow's parameter form for the UI
    config = _prefect_yaml()
    expected = {f"{_flow(d['entrypoint']).name}/{d['name']}": d for d in config["deployments"]}
    assert set(deployments) == set(expected)
    for name, spec in expected.items():
        deployment = deployments[name]
        assert deployment["work_pool_name"] == spec["work_pool"]["name"], name
        assert deployment["parameters"] == (spec.get("parameters") or {}), name
        form = deployment["parameter_openapi_schema"]["properties"]
        assert set(inspect.signature(_flow(spec["entrypoint"]).fn).parameters) == set(form), name
        # resolved on each worker host at run time, not frozen to the deployer's path
        assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == \
            "{{ $FEATUP_CHECKOUT }}", name
    nightly = deployments["evaluate/nightly-s3"]
    assert [(s["schedule"]["cron"], s["active"]) for s in nightly["schedules"]] == [("0 2 * * *", False)]
    with server.client() as api:
        scheduled = api.post("/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [nightly["id"]]}}})
        assert scheduled.raise_for_status().json() == [], "an inactive schedule must not create runs"

    data = _tiny_benchmark(tmp_path / "data")
    report = tmp_path / "report"
    server.start_worker("gpu", "gpu-host-1", limit=1)
    title = "deployment test evaluation"
    parameters = {**data, "report": str(report), "upsamplers": ["lowres", "bilinear"], "image_size": 64,
                  "cam_output_size": 32, "max_images": 8, "probe_steps": 20, "title": title}
    started = time.monotonic()
    with server.client() as api:  # what the UI's "Run > Custom run" form posts
        response = api.post(f"/deployments/{deployments['evaluate/report-gpu']['id']}/create_flow_run",
                            json={"parameters": parameters, "state": {"type": "SCHEDULED"}})
    run = response.raise_for_status().json()
    # the run gets the deployment's defaults under the form's values
    assert run["parameters"]["backbone"] == "efficientnet_lite0" and run["parameters"]["probe_steps"] == 20

    run = server.wait_for_flow_runs([run["id"]], timeout=420)[run["id"]]
    logs = server.logs_of(run["id"])
    assert run["state_type"] == "COMPLETED", f"{run['state_name']}: {run['state']['message']}\n{logs}\n" \
                                             + server.debug_output()
    print(f"evaluate/report-gpu: completed in {time.monotonic() - started:.0f} s after it was triggered")

    artifacts = _artifacts(server, run["id"])
    markdown, table = (artifacts[f"featup-evaluation-{k}"] for k in ("report", "table"))
    assert (markdown["type"], table["type"]) == ("markdown", "table")
    assert markdown["data"].startswith(f"# {title} — efficientnet_lite0")
    # A report on the worker's disk: its pictures travel inside the artifact, and the artifact says where the
    # folder is instead of linking a file:// path that no other machine can open.
    assert markdown["data"].count("](data:image/png;base64,") >= 3 and "file://" not in markdown["data"]
    assert f"`{report}/index.html`" in markdown["data"] and "featup-evaluation-html" not in artifacts
    rows = json.loads(table["data"])
    assert [r["upsampler"] for r in rows] == ["lowres", "bilinear"], rows
    assert all("mIoU % ↑" in r and "A.D. % ↓" in r for r in rows), rows  # both tasks ran on the worker
    assert (report / "index.html").is_file()
    assert "set_working_directory" in logs
