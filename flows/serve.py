"""Scheduled runs and scale-out: serve a flow on a cron, set up the ``gpu`` work pool, pick a task
runner.

* ``serve_flow`` wraps ``Flow.serve``: one process that creates a deployment (optionally on a cron)
  and runs its scheduled runs itself. Good for one machine.
* ``setup_pool`` creates/updates the ``gpu`` work pool (type ``process``) with a concurrency limit
  equal to the GPU count (at least 1), and the ``gpu`` *tag* concurrency limit with the same value
  (training tasks on CUDA carry the tag: at most that many train at once, across all flow runs).
  Deployments declared in ``prefect.yaml`` target the pool; any number of ``prefect worker start
  --pool gpu`` processes, on any number of machines, take its runs.
* ``task_runner_for`` gives the pipeline a Dask task runner (a local cluster or a remote scheduler),
  so the training tasks of *one* flow run spread over several cores or machines.

Flows are referenced by *module* entrypoint (``msaflow.flows.reproduce:reproduce_flow``), not by
file path: Prefect loads a file-path entrypoint (``flows/pipeline.py:pipeline``) with ``flows/``
first on ``sys.path``, where a module of ``flows/`` could shadow a top-level package of the same
name (the tasks once lived in ``flows/tasks.py``, which shadowed ``tasks``); a module path imports
the project the same way on every machine, installed (``site-packages/msaflow/flows/``) or from a
checkout (``<root>/flows/``, see ``msaflow/__init__.py``). A flow whose file is not in this
checkout is reported as missing, never imported eagerly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

import msaflow
from msaflow.devices import GPU_TAG, cuda_count

# The folder that holds the ``msaflow`` package: a checkout's root (with ``prefect.yaml``), or
# site-packages
ROOT = Path(msaflow.__file__).resolve().parents[1]
POOL = "gpu"

# name -> module entrypoint (module : flow function), importable from the project root
ENTRYPOINTS: dict[str, str] = {
    "pipeline": "msaflow.flows.pipeline:pipeline",
    # `reproduce` is the plain-Python wrapper, not the @flow
    "reproduce": "msaflow.flows.reproduce:reproduce_flow",
    "tune": "msaflow.flows.tune:tune",
}


class ServeError(ValueError):
    """A serve/deploy request that cannot be carried out (unknown flow, bad parameter, missing
    file)."""


def not_a_flow(obj: Any, entrypoint: str) -> str | None:
    """Why ``obj`` (loaded from ``entrypoint``) cannot be served or deployed, or None if it is a
    Prefect flow."""
    from prefect import Flow

    if isinstance(obj, Flow):
        return None
    module, _, func = entrypoint.partition(":")
    hint = ""
    mod = sys.modules.get(module)
    for candidate in (f"{func}_flow", f"{func}_pipeline"):
        if isinstance(getattr(mod, candidate, None), Flow):
            hint = f"; use {module}:{candidate}"
            break
    return f"{entrypoint} is not a Prefect flow (no @flow){hint}"


def entrypoint_file(entrypoint: str, root: Path = ROOT) -> Path:
    """``msaflow.flows.pipeline:pipeline`` -> ``<root>/msaflow/flows/pipeline.py`` where installed,
    else ``<root>/flows/pipeline.py`` (a checkout keeps ``flows/`` at its top, and
    ``msaflow/__init__.py`` maps it into the package); ``flows/pipeline.py:pipeline`` -> that
    file under ``<root>``."""
    target = entrypoint.rsplit(":", 1)[0]
    rel = target if target.endswith(".py") else target.replace(".", "/") + ".py"
    path = root / rel
    if not path.is_file() and rel.startswith("msaflow/"):
        checkout = root / rel.removeprefix("msaflow/")
        if checkout.is_file():
            return checkout
    return path


def entrypoint_exists(entrypoint: str, root: Path = ROOT) -> bool:
    """The entrypoint's file exists and defines its function (checked as text, nothing imported)."""
    file, func = entrypoint_file(entrypoint, root), entrypoint.rsplit(":", 1)[-1]
    return file.is_file() and f"def {func}(" in file.read_text(encoding="utf-8")


def available_flows(root: Path = ROOT) -> dict[str, str]:
    """The flows of ``ENTRYPOINTS`` present in this checkout."""
    return {name: ep for name, ep in ENTRYPOINTS.items() if entrypoint_exists(ep, root)}


def load_flow(name: str):
    """The flow object for ``pipeline`` | ``reproduce`` | ``tune`` (loaded from its entrypoint)."""
    import importlib

    if name not in ENTRYPOINTS:
        raise ServeError(f"--flow must be one of {sorted(ENTRYPOINTS)}, got {name!r}")
    entrypoint = ENTRYPOINTS[name]
    if not entrypoint_exists(entrypoint):
        raise ServeError(f"flow {name!r} is not in this checkout (expected {entrypoint})")
    module, _, func = entrypoint.partition(":")
    obj = getattr(importlib.import_module(module), func)
    reason = not_a_flow(obj, entrypoint)
    if reason:
        raise ServeError(reason)
    return obj


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["variants=[none,full]", "epochs=3"]`` -> ``{"variants": ["none", "full"], "epochs": 3}``
    (YAML values)."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ServeError(f"--param expects key=value, got {item!r}")
        try:
            params[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise ServeError(f"--param {key}: value {value!r} is not valid YAML: {exc}") from exc
    return params


def check_params(flow: Any, params: dict[str, Any], require: bool = False) -> None:
    """Unknown parameters fail; with ``require``, so do required ones (no default) left unset: every
    run of such a deployment would fail at start."""
    import inspect

    signature = inspect.signature(flow.fn).parameters
    names = set(signature)
    unknown = sorted(set(params) - names)
    if unknown:
        raise ServeError(
            f"flow {flow.name!r} has no parameter(s) {unknown}; expected some of {sorted(names)}"
        )
    missing = [
        n
        for n, p in signature.items()
        if p.default is inspect.Parameter.empty
        and n not in params
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if require and missing:
        raise ServeError(f"flow {flow.name!r} needs parameter(s) {missing} (no default); set them")


def task_runner_for(
    kind: str = "thread",
    workers: int | None = None,
    address: str | None = None,
    processes: bool = True,
):
    """The task runner for the pipeline's training tasks.

    ``kind``: ``thread`` (default: ``workers`` threads, 1 if unset) or ``dask``: a remote scheduler
    when ``address`` (``tcp://host:8786``) is given, else a local cluster of ``workers`` processes
    (default 2) with one thread each (``processes=False``: threads in this process, quicker to
    start, for tests). ``kind="auto"`` picks dask when an address or workers are given.
    """
    if kind == "auto":
        kind = "dask" if (address or workers) else "thread"
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max(1, workers or 1))
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": max(1, workers or 2),
                "threads_per_worker": 1,
                "processes": processes,
                "dashboard_address": None,
            }
        )
    raise ServeError(f"task runner kind must be thread | dask | auto, got {kind!r}")


def gpu_count() -> int:
    """Number of visible CUDA devices (``CUDA_VISIBLE_DEVICES`` applies), at least 1 (a CPU-only
    machine runs one training at a time)."""
    try:
        return max(1, cuda_count())
    except Exception:  # noqa: BLE001 - no torch/CUDA: one slot
        return 1


def setup_pool(
    name: str = POOL, concurrency: int | None = None, gpu_tag: str = GPU_TAG
) -> dict[str, Any]:
    """Create (or update) the process-type work pool ``name`` with ``concurrency`` (default: GPU
    count), and the tag concurrency limit of ``gpu_tag`` with the same value.

    Needs ``PREFECT_API_URL`` (a real server); against the ephemeral server the pool would vanish.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    limit = concurrency or gpu_count()
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
            if pool.type != "process":
                raise ServeError(
                    f"work pool {name!r} exists with type {pool.type!r}, expected 'process'"
                )
            client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))
            created = False
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    concurrency_limit=limit,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="msaflow training: one slot per GPU",
                )
            )
            created = True
        pool = client.read_work_pool(name)
        # The server's POST is an upsert (3.8 stores it as the global limit ``tag:<tag>``): a
        # second setup updates the value.
        client.create_concurrency_limit(tag=gpu_tag, concurrency_limit=limit)
        tag_limit = client.read_concurrency_limit_by_tag(gpu_tag)
    return {
        "name": pool.name,
        "type": pool.type,
        "concurrency_limit": pool.concurrency_limit,
        "created": created,
        "tag": tag_limit.tag,
        "tag_concurrency_limit": tag_limit.concurrency_limit,
    }


def with_runner(flow: Any, runner: Any) -> Any:
    return flow.with_options(task_runner=runner) if runner is not None else flow


def serve_flow(
    name: str = "pipeline",
    *,
    deployment: str | None = None,
    cron: str | None = None,
    parameters: dict[str, Any] | None = None,
    task_runner: Any = None,
    limit: int | None = None,
) -> None:
    """Create a deployment for flow ``name`` (optionally on ``cron``) and run its runs in this
    process."""
    flow = load_flow(name)
    parameters = dict(parameters or {})
    check_params(flow, parameters, require=True)
    from prefect.deployments.runner import EntrypointType

    flow = with_runner(flow, task_runner)
    flow.serve(
        name=deployment or f"{name}-served",
        cron=cron,
        parameters=parameters,
        limit=limit,
        tags=["msaflow", name],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def read_prefect_yaml(path: Path = ROOT / "prefect.yaml") -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _schedules(dep: dict[str, Any]) -> list[Any]:
    from prefect.schedules import Cron

    out = []
    for sched in dep.get("schedules") or []:
        if "cron" not in sched:
            raise ServeError(
                f"deployment {dep['name']!r}: only cron schedules are supported here, got {sched}"
            )
        out.append(
            Cron(
                sched["cron"],
                timezone=sched.get("timezone"),
                active=sched.get("active", True),
                parameters=sched.get("parameters"),
            )
        )
    return out


def deploy_from_yaml(
    names: list[str] | None = None,
    path: Path = ROOT / "prefect.yaml",
    work_pool: str | None = None,
    source: Path | None = None,
) -> list[dict[str, Any]]:
    """Register ``prefect.yaml``'s deployments (all, or ``names``) whose entrypoint exists; skip the
    rest.

    Same result as ``prefect deploy --all`` run in ``source`` (default: the file's folder): workers
    ``cd`` there and import the flow's module. Goes through ``RunnerDeployment.apply`` because
    Prefect 3.8.8's ``prefect deploy`` / ``flow.deploy`` end in a 422 from
    ``/work_pools/<pool>/workers/filter`` (a null ``limit``) after registering.
    """
    import importlib

    from prefect.deployments.runner import EntrypointType
    from prefect.runner.storage import LocalStorage

    spec = read_prefect_yaml(path)
    root = (source or path.parent).resolve()
    report = []
    for dep in spec.get("deployments", []):
        if names and dep["name"] not in names:
            continue
        if not entrypoint_exists(dep["entrypoint"], root):
            report.append(
                {
                    "name": dep["name"],
                    "status": "skipped",
                    "reason": f"{dep['entrypoint']} not present",
                }
            )
            continue
        pool = dep.get("work_pool") or {}
        module, _, func = dep["entrypoint"].partition(":")
        if module.endswith(".py"):
            raise ServeError(
                f"deployment {dep['name']!r}: use a module entrypoint (msaflow.flows.x:y), "
                f"not {module!r}"
            )
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        flow = getattr(importlib.import_module(module), func)
        reason = not_a_flow(flow, dep["entrypoint"])
        if reason:  # a plain function: nothing a worker could run; say so, deploy the others
            report.append({"name": dep["name"], "status": "skipped", "reason": reason})
            continue
        parameters = dict(dep.get("parameters") or {})
        try:
            check_params(flow, parameters, require=True)
        except ServeError as exc:
            report.append({"name": dep["name"], "status": "skipped", "reason": str(exc)})
            continue
        deployment = flow.to_deployment(
            name=dep["name"],
            description=dep.get("description"),
            tags=dep.get("tags"),
            parameters=parameters,
            schedules=_schedules(dep),
            work_pool_name=work_pool or pool.get("name", POOL),
            work_queue_name=pool.get("work_queue_name"),
            job_variables=pool.get("job_variables") or None,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        deployment.storage = LocalStorage(path=str(root))  # pull step: set_working_directory <root>
        deployment_id = deployment.apply()
        report.append(
            {
                "name": dep["name"],
                "status": "deployed",
                "entrypoint": dep["entrypoint"],
                "flow": flow.name,
                "id": str(deployment_id),
            }
        )
    return report
