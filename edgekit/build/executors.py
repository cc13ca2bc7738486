"""Where a build's exports run: this process, a local process pool, or a Ray cluster.

The unit of work is an :class:`ExportJob`: one model on one target with the precisions the
cache lacks (one load and one conversion serve them all). A job returns each cell's record and
its files' bytes, so the build stores and places them the same way whichever executor ran it,
and a Ray worker on another node needs no access to the output folder. Timing is not done
here: the build times cells afterwards, one at a time per device, once no export is loading the
machine.

Executors are found by name in :data:`EXECUTORS`; each is a function
``(jobs, workers, address) -> iterator of (job, JobResult)`` yielding results as they finish.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import errors
from edgekit.errors import DeviceError, EdgekitError, UsageError, first_line


@dataclass(frozen=True)
class ExportJob:
    """Everything a worker needs to export one model on one target (paths must be readable
    where the worker runs: a multi-node Ray cluster needs them on a shared filesystem)."""

    model: str
    path: str
    target: str
    precisions: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False
    #: compress passes (their sidecar dicts) applied to the model before it is exported
    compress: tuple[dict[str, Any], ...] = ()


@dataclass
class CellOutput:
    precision: str
    record: dict[str, Any]
    files: dict[str, bytes]


@dataclass
class JobResult:
    outputs: list[CellOutput] = field(default_factory=list)
    seconds: float = 0.0
    #: an EdgekitError crossing a process boundary travels as (class name, one-line message)
    error: tuple[str, str] | None = None

    def raise_error(self) -> None:
        if self.error is None:
            return
        name, message = self.error
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, EdgekitError)):
            cls = EdgekitError
        exc = cls.__new__(cls)  # some classes take other constructor arguments
        Exception.__init__(exc, message)
        raise exc


def run_job(job: ExportJob) -> JobResult:
    """Export ``job`` into a temporary folder and return what it produced. Never raises an
    EdgekitError: it comes back in the result (an executor must not lose the others' work)."""
    import edgekit
    from edgekit import progress

    progress.QUIET = progress.QUIET or job.quiet
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-build-") as work:
            path, compressed = _compressed(job, Path(work)) if job.compress else (job.path, None)
            reports = edgekit.export(
                path, job.target, list(job.precisions), output_dir=work, **job.kwargs
            )
            outputs = [_output(p, r) for p, r in zip(job.precisions, reports, strict=True)]
            for out in outputs:
                out.record["compress"] = compressed
    except EdgekitError as exc:
        return JobResult(error=(type(exc).__name__, first_line(exc)))
    return JobResult(outputs, time.perf_counter() - started)


def _compressed(job: ExportJob, work: Path) -> tuple[str, list[dict[str, Any]]]:
    """The job's model after its compress passes, data from the model's calibration and eval
    data; what each pass did, for the manifest."""
    from edgekit.compress import api
    from edgekit.compress.passes import from_dict

    data = job.kwargs.get("calibration")
    result = api.compress(
        job.path,
        [from_dict(p) for p in job.compress],
        data=None if data == "random" else data,
        eval_data=job.kwargs.get("eval_data"),
        output_dir=work / "compressed",
        name=Path(job.path).name.split(".")[0],
    )
    keep = ("kind", "params_before", "params_after", "macs_before", "macs_after")
    summary = [
        {
            **{k: getattr(r, k) for k in keep},
            "metric": r.metric_name,
            "metric_after": r.metric_after,
        }
        for r in result.reports
    ]
    return str(result.path), summary


def _output(precision: str, report: Any) -> CellOutput:
    sidecar = Path(report.sidecar)
    meta = json.loads(sidecar.read_text())
    names = sorted({*meta["artifact"]["files"], sidecar.name})
    folder = Path(report.artifact).parent
    record = {
        "size_bytes": report.size_bytes,
        "agreement": report.agreement.to_json(),
        "recipe": meta.get("recipe"),
        "warnings": report.warnings,
        "artifact": Path(report.artifact).name,
    }
    gate = report.gate  # the accuracy gate's JSON, when the recipe asked for one
    if gate and gate.get("sensitivity"):
        # the accuracy gate measured each layer alone: the report plots it
        record["sensitivity"] = {
            "metric": gate.get("metric"),
            "float_layers": gate.get("float_layers"),
            "layers": gate["sensitivity"],
        }
    return CellOutput(precision, record, {n: (folder / n).read_bytes() for n in names})


Results = Iterator[tuple[ExportJob, JobResult]]


def in_process(jobs: Sequence[ExportJob], workers: int | None, address: str | None) -> Results:
    for job in jobs:
        yield job, run_job(job)


def process_pool(jobs: Sequence[ExportJob], workers: int | None, address: str | None) -> Results:
    """Up to ``workers`` jobs at once, each in a fresh ``python -m edgekit.build.executors``
    process (not multiprocessing: its spawn re-runs the caller's ``__main__``, and forking
    TensorFlow or torch is unsafe); one job in all runs here without a pool."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        yield from in_process(jobs, workers, address)
        return
    procs: set[subprocess.Popen[bytes]] = set()
    with ThreadPoolExecutor(workers) as pool:
        pending = {pool.submit(_in_subprocess, job, procs): job for job in jobs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        finally:  # stopped early (a failure without --keep-going, Ctrl-C): stop the rest
            for future in pending:
                future.cancel()
            for proc in list(procs):
                proc.terminate()


def _in_subprocess(job: ExportJob, procs: set[subprocess.Popen[bytes]]) -> JobResult:
    # Side by side on a small machine each runtime would size its thread pool to every core
    # and the exports would fight over them.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.build.executors"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    procs.add(proc)
    try:
        out, _ = proc.communicate(pickle.dumps(job))
    finally:
        procs.discard(proc)
    if proc.returncode != 0:
        return JobResult(
            error=(
                "ConversionError",
                f"the export worker for {job.model}/{job.target} exited with code "
                f"{proc.returncode} (its output is above)",
            )
        )
    return pickle.loads(out)  # our own child's answer, not a user file


def _worker() -> None:
    """The child side of :func:`process_pool`: a pickled job on stdin, its result on stdout.
    Everything the export itself prints goes to stderr, so stdout carries only the result."""
    result_fd = os.dup(1)
    os.dup2(2, 1)
    job = pickle.loads(sys.stdin.buffer.read())
    result = run_job(job)
    with os.fdopen(result_fd, "wb") as out:
        out.write(pickle.dumps(result))


def ray_cluster(jobs: Sequence[ExportJob], workers: int | None, address: str | None) -> Results:
    """One Ray task per job on the cluster at ``address`` ($RAY_ADDRESS, else a local one
    started here). ``workers`` caps the tasks in flight."""
    ray = errors.require("ray", "ray")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _reachable(address)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise DeviceError(
            f"--executor ray: cannot join the Ray cluster at {address or 'a new local one'}: "
            f"{first_line(exc)}; start one with `ray start --head` or check --ray-address"
        ) from exc
    # A Ray worker has the environment of the `ray start` that made it, not this one's: the
    # caches and progress settings travel with the task.
    env = {k: v for k, v in os.environ.items() if k.startswith("EDGEKIT_")}
    task = ray.remote(max_retries=0)(run_job).options(runtime_env={"env_vars": env})
    queue = list(jobs)
    limit = workers or len(queue)
    running: dict[Any, ExportJob] = {}
    try:
        while queue or running:
            while queue and len(running) < limit:
                job = queue.pop(0)
                running[task.remote(job)] = job
            done, _ = ray.wait(list(running), num_returns=1)
            job = running.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                # a worker that died (out of memory, killed) fails its own cells only
                result = JobResult(error=("ConversionError", f"ray task failed: {first_line(exc)}"))
            yield job, result
    finally:
        for ref in running:
            ray.cancel(ref)
        ray.shutdown()


def _reachable(address: str) -> None:
    """Fail in seconds where ray.init would retry a dead HOST:PORT for minutes."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise DeviceError(
            f"--executor ray: cannot join the Ray cluster at {address}: {exc.strerror or exc}; "
            "start one with `ray start --head` or check --ray-address"
        ) from exc


EXECUTORS: dict[str, Callable[[Sequence[ExportJob], int | None, str | None], Results]] = {
    "local": process_pool,
    "ray": ray_cluster,
}


def executor(name: str) -> Callable[[Sequence[ExportJob], int | None, str | None], Results]:
    if name not in EXECUTORS:
        raise UsageError(f"--executor {name}: one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name]


if __name__ == "__main__":
    # run as the module itself, not as __main__, so the pickled types are edgekit's
    from edgekit.build.executors import _worker as worker

    worker()
