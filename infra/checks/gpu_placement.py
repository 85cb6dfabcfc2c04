"""Does the compiled KFP pipeline's GPU placement land on the Terraform GPU node pool?

Two sides, read from their sources of truth:
* the compiled pipeline YAML (kfp + kfp-kubernetes): per executor, the node selector, the tolerations and the
  accelerator request;
* the GPU node pool in infra/terraform (parsed HCL, as ``offline_checks.parse_terraform`` returns it): its
  labels (its own plus the ones GKE adds to every GPU node), its taints and its accelerator, with ``var.*`` and
  ``local.*`` references resolved against an environment's values (root defaults + environments/<name>.tfvars).

Standard library and PyYAML only, so both the test process (.venv) and .venv-infra can import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Terraform's taint effects and Kubernetes' spelling of them.
TAINT_EFFECTS = {"NO_SCHEDULE": "NoSchedule", "PREFER_NO_SCHEDULE": "PreferNoSchedule", "NO_EXECUTE": "NoExecute"}
# Labels GKE puts on every node of a pool with accelerators.
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GKE_NODEPOOL_LABEL = "cloud.google.com/gke-nodepool"
_REF = re.compile(r"^\$\{(var|local)\.([A-Za-z0-9_]+)((?:\.[A-Za-z0-9_]+)*)\}$")


@dataclass
class GpuPool:
    """What a Pod sees of the GPU node pool: node labels, taints, accelerator."""

    name: str
    labels: dict[str, str]
    taints: list[dict[str, str]]
    accelerator_type: str
    accelerator_count: int
    min_nodes: int


@dataclass
class TaskPlacement:
    """The placement settings of one executor of a compiled pipeline."""

    executor: str
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    accelerator_type: str = ""
    accelerator_count: int = 0


def read_pipeline_placements(compiled: Path) -> dict[str, TaskPlacement]:
    """Placement of every executor of a compiled pipeline that asks for an accelerator, a node selector or a
    toleration, keyed by executor name (e.g. ``exec-train-two-tower``)."""
    docs = [d for d in yaml.safe_load_all(compiled.read_text(encoding="utf-8")) if d]
    placements: dict[str, TaskPlacement] = {}

    def get(name: str) -> TaskPlacement:
        return placements.setdefault(name, TaskPlacement(executor=name))

    for doc in docs:
        for name, spec in ((doc.get("deploymentSpec") or {}).get("executors") or {}).items():
            acc = (((spec.get("container") or {}).get("resources") or {}).get("accelerator")) or {}
            if acc:
                p = get(name)
                p.accelerator_type = str(acc.get("resourceType") or acc.get("type") or "")
                p.accelerator_count = int(acc.get("resourceCount") or acc.get("count") or 0)
        k8s = ((doc.get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec") or {}
        for name, spec in (k8s.get("executors") or {}).items():
            selector = (spec.get("nodeSelector") or {}).get("labels") or {}
            tolerations = spec.get("tolerations") or []
            if selector or tolerations:
                p = get(name)
                p.node_selector.update({str(k): str(v) for k, v in selector.items()})
                p.tolerations.extend({k: str(v) for k, v in t.items()} for t in tolerations)
    return placements


def _lookup(path: list[str], value: Any) -> Any:
    for part in path:
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        value = value[part]
    return value


def resolve(value: Any, variables: dict[str, Any], locals_: dict[str, Any]) -> Any:
    """Resolve a whole-value ``${var.x}`` / ``${local.a.b}`` reference (recursively); other values, and
    references that cannot be resolved here (e.g. ``${local.x}`` of another module), are returned unchanged."""
    for _ in range(10):
        if not isinstance(value, str):
            return value
        m = _REF.match(value)
        if not m:
            return value
        scope, name, rest = m.groups()
        path = [name, *[p for p in rest.split(".") if p]]
        try:
            value = _lookup(path, variables if scope == "var" else locals_)
        except (KeyError, TypeError, IndexError):
            return value
    raise ValueError(f"reference chain too deep: {value!r}")


def variable_defaults(parsed_files: list[dict[str, Any]]) -> dict[str, Any]:
    """``{name: default}`` of the variables declared in these parsed files (variables without default omitted)."""
    out: dict[str, Any] = {}
    for parsed in parsed_files:
        for block in parsed.get("variable", []):
            for name, body in block.items():
                if "default" in body:
                    out[name] = body["default"]
    return out


def _block(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key) or [{}]
    return value[0] if isinstance(value, list) else value


def environment_values(hcl: dict[str, dict[str, Any]], environment: str) -> dict[str, Any]:
    """The root module's variables as ``environment`` sets them: the defaults of the root module's variables
    (the ``.tf`` files directly in infra/terraform), overridden by ``environments/<environment>.tfvars``."""
    values = variable_defaults([v for k, v in hcl.items() if "/" not in k and k.endswith(".tf")])
    tfvars = f"environments/{environment}.tfvars"
    if tfvars not in hcl:
        raise ValueError(f"no {tfvars}")
    values.update(hcl[tfvars])
    return values


def gpu_pool_from_hcl(hcl: dict[str, dict[str, Any]], environment: str, pool_resource: str = "gpu") -> GpuPool:
    """The GPU pool as deployed for ``environment``: the gke module's node pool resource with the module's
    variables taken from the root module's call, whose ``var.*`` come from the environment's values
    (:func:`environment_values`). ``hcl`` maps paths relative to infra/terraform to parsed files."""
    env_vars = environment_values(hcl, environment)
    module_args: dict[str, Any] = {}
    for k, parsed in hcl.items():
        if "/" not in k and k.endswith(".tf"):
            for block in parsed.get("module", []):
                if "gke" in block:
                    module_args = {a: resolve(v, env_vars, {}) for a, v in block["gke"].items()}
    mod = "modules/gke/"
    mod_files = [v for k, v in hcl.items() if k.startswith(mod)]
    variables = {**variable_defaults(mod_files), **module_args}
    locals_: dict[str, Any] = {}
    pool: dict[str, Any] | None = None
    for parsed in mod_files:
        for block in parsed.get("locals", []):
            locals_.update(block)
        for block in parsed.get("resource", []):
            body = (block.get("google_container_node_pool") or {}).get(pool_resource)
            if body is not None:
                pool = body
    if pool is None:
        raise ValueError(f"no google_container_node_pool.{pool_resource} in modules/gke")

    def r(v: Any) -> Any:
        return resolve(v, variables, locals_)

    node_config = _block(pool, "node_config")
    accelerator = _block(node_config, "guest_accelerator")
    name = str(r(pool["name"]))
    labels = {str(k): str(r(v)) for k, v in (r(node_config.get("labels")) or {}).items()}
    accelerator_type = str(r(accelerator.get("type", "")))
    labels.setdefault(GKE_ACCELERATOR_LABEL, accelerator_type)
    labels.setdefault(GKE_NODEPOOL_LABEL, name)
    taints = []
    for t in node_config.get("taint", []):
        effect = str(r(t["effect"]))
        taints.append({"key": str(r(t["key"])), "value": str(r(t.get("value", ""))),
                       "effect": TAINT_EFFECTS.get(effect, effect)})
    autoscaling = _block(pool, "autoscaling")
    min_nodes = r(autoscaling.get("total_min_node_count", autoscaling.get("min_node_count", -1)))
    return GpuPool(name=name, labels=labels, taints=taints, accelerator_type=accelerator_type,
                   accelerator_count=int(r(accelerator.get("count", 0))), min_nodes=int(min_nodes))


def _tolerates(toleration: dict[str, str], taint: dict[str, str]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("operator") == "Exists":
        return toleration.get("key") in (None, "", taint["key"])
    return toleration.get("key") == taint["key"] and toleration.get("value", "") == taint["value"]


def placement_mismatches(task: TaskPlacement, pool: GpuPool) -> list[str]:
    """Why Pods of ``task`` would not be scheduled on ``pool`` (empty list: they would)."""
    problems: list[str] = []
    if not task.node_selector:
        problems.append(f"{task.executor}: no node selector, the trainer could land on a CPU node")
    for key, value in task.node_selector.items():
        if pool.labels.get(key) != value:
            problems.append(f"{task.executor}: selects {key}={value}, GPU pool {pool.name!r} has "
                            f"{key}={pool.labels.get(key)!r}")
    for taint in pool.taints:
        if taint["effect"] in ("NoSchedule", "NoExecute") and not any(_tolerates(t, taint) for t in task.tolerations):
            problems.append(f"{task.executor}: does not tolerate the taint "
                            f"{taint['key']}={taint['value']}:{taint['effect']}")
    if task.accelerator_count <= 0:
        problems.append(f"{task.executor}: requests no accelerator")
    elif task.accelerator_count > pool.accelerator_count:
        problems.append(f"{task.executor}: requests {task.accelerator_count} GPUs, GPU nodes have "
                        f"{pool.accelerator_count}")
    # The accelerator type is either the extended resource name (nvidia.com/gpu) or a GKE accelerator name.
    if task.accelerator_type and task.accelerator_type != "nvidia.com/gpu" \
            and task.accelerator_type.lower() != pool.accelerator_type.lower():
        problems.append(f"{task.executor}: accelerator {task.accelerator_type!r}, GPU pool has "
                        f"{pool.accelerator_type!r}")
    return problems
