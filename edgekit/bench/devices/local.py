"""This machine: each artifact's runner runs in a fresh subprocess of the current Python.

The runner runs from where it lives (its backend's package) with the harness's folder on
``PYTHONPATH``, which is how its ``import _harness`` finds it; on a device both are copied
into one folder instead (``ssh.py``).

``--device CPU|GPU|NPU|...`` is also local: the name goes to the runner as the runtime's
accelerator (OpenVINO's device names); runners without such a device say which they have."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.bench.devices.process import ErrorFor, RunnerProcess
from edgekit.bench.runners import HARNESS
from edgekit.errors import ConversionError, EdgekitError, UsageError


class LocalDevice:
    protocol = "runner"
    kind = "local"
    remote = False

    def __init__(
        self, spec: str = "local", python: str | None = None, timeout: float = 600.0, **_: Any
    ) -> None:
        self.spec = spec
        # Runtimes name accelerators in capitals (OpenVINO: CPU, GPU.0, NPU, AUTO:GPU,CPU).
        self.accelerator = None if spec.lower() == "local" else spec.upper()
        self._python = python or sys.executable
        self._timeout = timeout

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "accelerator": self.accelerator}

    def check_pin(self, cpus: set[int]) -> None:
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        if allowed is not None and not cpus <= allowed:
            raise UsageError(
                f"--pin: CPU(s) {sorted(cpus - allowed)} are not available here "
                f"(this process may run on: {_ranges(allowed)})"
            )

    def start(
        self,
        runner: Path,
        files: Sequence[Path],
        args: Sequence[str],
        inputs: Path | None,
        label: str,
        error_for: ErrorFor,
    ) -> RunnerProcess:
        argv = [self._python, str(runner), str(files[0]), *args]
        argv += ["--inputs", str(inputs) if inputs else "random"]
        path = [str(HARNESS.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
        return RunnerProcess(
            argv,
            label=label,
            timeout=self._timeout,
            error_for=error_for,
            exit_error=lambda code, err: _exit_error(label, code, err),
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        )

    def close(self) -> None:
        pass


def _exit_error(label: str, code: int, stderr: str) -> EdgekitError:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else "no message"
    return ConversionError(f"{label}: the runner stopped (exit code {code}): {last}")


def _ranges(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


DEVICE_CLASS = LocalDevice
