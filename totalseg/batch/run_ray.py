"""Run a cohort's cases on a Ray cluster: actors that each hold one loaded predictor, a case at a time.

One actor per GPU where the cluster has GPUs (and the device asked for is a GPU), otherwise one per
``cpus_per_worker`` CPUs. Every node must see the inputs and the cohort folder at the same paths (a shared
file system): an actor writes its case's staging folder and renames it into place as a local run does. The
driver (this process) keeps the case table. An actor that dies (killed, out of memory, node lost) costs
the case it was running: the case goes to a new actor, and fails only if that one dies on it too. This
module is the only one that imports ray, and only when a run asks for it.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from totalseg.batch.discover import Case
from totalseg.batch.layout import case_folder
from totalseg.batch.table import DONE, FAILED, CaseRow
from totalseg.batch.worker import CaseWorker, one_line
from totalseg.errors import UserError

ATTEMPTS = 2  # a case that kills two workers is failed (it would likely kill every worker)


@dataclass(frozen=True)
class RaySettings:
    """Where and how: ``address`` None finds or starts a local cluster; ``env`` goes to every worker."""

    address: str | None = None
    cpus_per_worker: int | None = None
    workers: int | None = None
    env: Mapping[str, str] | None = None


def _connect(settings: RaySettings):
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs the ray package: pip install 'totalseg[ray]'") from None
    import totalseg

    # py_modules: the workers run this very totalseg (uploaded by Ray), whatever the nodes have installed.
    runtime_env: dict[str, Any] = {"py_modules": [totalseg]}
    if settings.env:
        runtime_env["env_vars"] = dict(settings.env)
    try:  # address None: $RAY_ADDRESS, else a cluster started on this machine, else a new local one
        ray.init(address=settings.address, runtime_env=runtime_env, log_to_driver=False,
                 logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot connect to the Ray cluster {settings.address or '(local)'}: "
                        f"{' '.join(str(e).split())}") from None
    return ray


def _shape(ray, device: str, settings: RaySettings, n_cases: int) -> tuple[int, dict[str, float], str]:
    """How many actors, the resources of each, and their device."""
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    if gpus and device not in ("cpu", "mps"):
        per = {"num_gpus": 1, "num_cpus": settings.cpus_per_worker or max(1, cpus // gpus)}
        count, device = gpus, "gpu"  # each actor sees its own GPU as the first one
    else:
        per = {"num_cpus": settings.cpus_per_worker or min(4, cpus)}
        count, device = max(1, cpus // int(per["num_cpus"])), "cpu"
    return max(1, min(settings.workers or count, n_cases)), per, device


def run_ray(cases: Sequence[Case], out_dir: Path, options: Mapping[str, Any], device: str, engine: str,
            keep_models: int, settings: RaySettings, note: Callable[[str], None]) -> Iterator[CaseRow]:
    """Run ``cases`` on the cluster; yields each case's row as it finishes."""
    ray = _connect(settings)
    try:
        count, per, worker_device = _shape(ray, device, settings, len(cases))
        actor_class = ray.remote(max_restarts=0, **per)(CaseWorker)

        def new_actor():
            return actor_class.remote(worker_device, engine, int(per["num_cpus"]), keep_models)

        actors = [new_actor() for _ in range(count)]
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as e:
            raise UserError(f"a Ray worker could not start: {one_line(e.__cause__ or e)}") from None
        note(f"Ray: {count} workers ({', '.join(f'{k[4:]}={v}' for k, v in per.items())} each, {worker_device})")
        yield from _schedule(ray, cases, out_dir, dict(options), actors, new_actor, note)
    finally:
        ray.shutdown()


def _schedule(ray, cases, out_dir: Path, options: dict, idle: list, new_actor,
              note: Callable[[str], None]) -> Iterator[CaseRow]:
    """Give each idle actor the next case; a case whose actor died goes back to the front of the queue."""
    queue = deque((case, 1) for case in cases)
    running: dict[Any, tuple[Any, Case, int]] = {}
    while queue or running:
        while idle and queue:
            actor = idle.pop()
            case, attempt = queue.popleft()
            running[actor.run.remote(case, str(out_dir), options)] = (actor, case, attempt)
        [ref], _ = ray.wait(list(running), num_returns=1)
        actor, case, attempt = running.pop(ref)
        try:
            row = ray.get(ref)
            idle.append(actor)
        except ray.exceptions.RayError as e:  # the actor is gone (or unusable): replace it
            ray.kill(actor, no_restart=True)
            idle.append(new_actor())
            row = _after_death(case, attempt, out_dir, e, queue, note)
        if row is not None:
            yield row


def _after_death(case: Case, attempt: int, out_dir: Path, error: Exception, queue: deque,
                 note: Callable[[str], None]) -> CaseRow | None:
    """The row of a case whose worker died, or None when it goes back to the queue."""
    if case_folder(out_dir, case.case_id).is_dir():  # it died after moving the case into place
        return CaseRow(case.case_id, str(case.input), DONE)
    if attempt < ATTEMPTS:
        note(f"Ray worker died while segmenting {case.case_id}; retrying it on a new worker")
        queue.appendleft((case, attempt + 1))
        return None
    return CaseRow(case.case_id, str(case.input), FAILED,
                   f"the Ray worker died on this case {ATTEMPTS} times (last: {one_line(error)})")
