"""An Android device over adb: ``adb://SERIAL``.

Runs TFLite's own ``benchmark_model`` binary on the device (the path given with
``--benchmark-binary``: a local file is pushed, anything else is taken as a path on the device;
without it the usual places in /data/local/tmp and the PATH are searched) on the pushed
``.tflite``, and parses its log into the same schema. ``benchmark_model`` reports aggregate
figures only, so p90/p99 are null; p50 is its ``median``. Artifacts run one after another (one
invocation each), not interleaved.

The serial is checked before adb runs, and every local path is pushed as its absolute real path,
so neither can be read by adb as an option.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from edgekit.bench.devices import shown
from edgekit.bench.runners._harness import parse_cpuinfo
from edgekit.errors import ConversionError, DeviceError, UsageError

REMOTE_ROOT = "/data/local/tmp"
# Where the prebuilt binaries are usually put; searched in this order, then $PATH.
_CANDIDATES = (
    f"{REMOTE_ROOT}/benchmark_model",
    f"{REMOTE_ROOT}/android_aarch64_benchmark_model",
    f"{REMOTE_ROOT}/android_arm_benchmark_model",
)
# What `adb devices` shows: USB serials, emulator-5554, HOST:PORT, mDNS names (a._adb-tls._tcp).
_SERIAL = re.compile(r"[A-Za-z0-9._:][A-Za-z0-9._:-]*")
_NUMBER = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"


class AdbDevice:
    protocol = "tool"
    kind = "adb"
    remote = True
    suffixes = (".tflite",)

    def __init__(
        self,
        spec: str,
        benchmark_binary: str | None = None,
        timeout: float = 600.0,
        adb: str = "adb",
        **_: Any,
    ) -> None:
        serial = spec.split("://", 1)[1].strip("/")
        if not _SERIAL.fullmatch(serial):
            raise UsageError(
                f"--device {shown(spec)}: expected adb://SERIAL as `adb devices` lists it "
                "(letters, digits, '.', ':', '_', '-'; not starting with '-')"
            )
        if benchmark_binary is not None and benchmark_binary.startswith("-"):
            # A device path is the first word of the shell command, where adb shell would
            # take it for one of its own options.
            raise UsageError(
                f"--benchmark-binary {shown(benchmark_binary)}: a path may not start with '-'; "
                f"write ./{benchmark_binary}"
            )
        self.spec = spec
        self.serial = serial
        self._binary = benchmark_binary
        self._timeout = timeout
        self._adb = adb
        self._remote_dir: str | None = None
        self._checked = False
        self._info: dict[str, Any] = {}
        self._tool: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "serial": self.serial, **self._info}

    def _run(
        self, args: list[str], what: str, timeout: float | None = None, check: bool = True
    ) -> str:
        """adb's stdout; with ``check=False`` stdout and stderr whatever the exit code."""
        argv = [self._adb, *args]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout or self._timeout
            )
        except FileNotFoundError as exc:
            raise DeviceError(
                "adb not found: install Android platform-tools and put adb on the PATH"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"{self.serial}: {what} did not finish within the timeout") from exc
        if not check:
            return done.stdout + done.stderr
        if done.returncode != 0:
            msg = done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}"
            raise DeviceError(f"{self.serial}: {what} failed: {msg.splitlines()[-1][:300]}")
        return done.stdout

    def _push(self, local: str | Path, remote: str, what: str) -> None:
        # The real file, not a symlink to it (adb would push the link itself); absolute, so a
        # name starting with '-' is not one of push's options.
        self._run(["-s", self.serial, "push", os.path.realpath(local), remote], what)

    def _shell(self, *words: str, what: str, check: bool = True) -> str:
        # adb joins its arguments with spaces for the device's shell: quote each word.
        command = " ".join(shlex.quote(w) for w in words)
        return self._run(["-s", self.serial, "shell", command], what, check=check)

    def _shell_script(self, script: str, what: str) -> str:
        return self._run(["-s", self.serial, "shell", script], what)

    def check(self) -> None:
        """``adb devices`` lists this serial in state ``device``, else a clear DeviceError."""
        if self._checked:
            return
        out = self._run(["devices"], "`adb devices`", timeout=60)
        states = parse_devices(out)
        if self.serial not in states:
            listed = ", ".join(f"{s} ({st})" for s, st in states.items()) or "none"
            raise DeviceError(
                f"adb has no device '{self.serial}' (connected: {listed}); check the cable or "
                "`adb connect HOST:PORT`, and that USB debugging is on"
            )
        state = states[self.serial]
        if state == "unauthorized":
            raise DeviceError(
                f"{self.serial} is unauthorized: accept the USB debugging prompt on the device"
            )
        if state != "device":
            raise DeviceError(f"{self.serial} is {state}: reconnect it (`adb reconnect`)")
        text = self._shell_script(
            "getprop ro.product.model; echo ---; cat /proc/cpuinfo", "reading the device info"
        )
        product, _, cpuinfo = text.partition("---")
        cpu = parse_cpuinfo(cpuinfo)
        cpu["machine"] = "android"
        self._info = {"product": product.strip() or None, "cpu": cpu}
        self._checked = True

    def _workdir(self) -> str:
        if self._remote_dir is None:
            out = self._shell("mktemp", "-d", f"{REMOTE_ROOT}/edgekit.XXXXXX", what="mktemp")
            lines = out.strip().splitlines()
            if not lines or not lines[-1].startswith("/"):
                raise DeviceError(f"{self.serial}: mktemp gave no folder (got {out.strip()!r})")
            self._remote_dir = lines[-1].strip()
        return self._remote_dir

    def _find_tool(self) -> str:
        if self._tool:
            return self._tool
        if self._binary and Path(self._binary).is_file():
            target = f"{self._workdir()}/benchmark_model"
            self._push(self._binary, target, "pushing benchmark_model")
            self._shell("chmod", "755", target, what="chmod benchmark_model")
            self._tool = target
        elif self._binary:
            self._tool = self._binary
        else:
            tests = "; ".join(
                f"[ -x {shlex.quote(c)} ] && echo {shlex.quote(c)}" for c in _CANDIDATES
            )
            found = self._shell_script(
                f"{tests}; command -v benchmark_model; true", "looking for benchmark_model"
            )
            paths = [ln.strip() for ln in found.splitlines() if ln.strip().startswith("/")]
            if not paths:
                raise DeviceError(
                    f"{self.serial}: TFLite's benchmark_model is not on the device; download the "
                    "prebuilt android_aarch64_benchmark_model and pass --benchmark-binary FILE "
                    "(edgekit pushes it)"
                )
            self._tool = paths[0]
        return self._tool

    def command(self, tool: str, model: str, settings: dict[str, Any]) -> list[str]:
        """benchmark_model's command line for ``settings``."""
        words = []
        if settings.get("pin"):
            from edgekit.bench.runners._harness import parse_cpus

            mask = sum(1 << c for c in parse_cpus(str(settings["pin"])))
            words += ["taskset", f"{mask:x}"]
        words += [
            tool,
            f"--graph={model}",
            f"--num_runs={settings['runs']}",
            f"--warmup_runs={settings['warmup']}",
            "--warmup_min_secs=0",
            f"--min_secs={settings['duration_s'] or 0}",
            "--report_peak_memory_footprint=true",
        ]
        if settings.get("threads"):
            words.append(f"--num_threads={settings['threads']}")
        return words

    def measure(self, art: Any, settings: dict[str, Any], inputs: Path | None) -> dict[str, Any]:
        if inputs is not None:
            raise UsageError(
                "--inputs FILE is not supported with adb://: benchmark_model feeds random data"
            )
        if art.path.suffix.lower() not in self.suffixes:
            raise UsageError(
                f"{art.path}: adb:// runs TFLite's benchmark_model, which takes .tflite files only"
            )
        self.check()
        tool = self._find_tool()
        remote = f"{self._workdir()}/{art.path.name}"
        self._push(art.path, remote, f"pushing {art.path.name}")
        words = self.command(tool, remote, settings)
        out = self._shell(*words, what="benchmark_model", check=False)
        figures = parse_benchmark_model(out)
        if figures is None:
            lines = out.strip().splitlines() or ["no output"]
            errors = [ln for ln in lines if ln.startswith("ERROR")]
            if errors:  # the tool ran and refused the model
                raise ConversionError(
                    f"{art.path.name} on {self.serial}: benchmark_model failed: {errors[-1][:300]}"
                )
            raise DeviceError(f"{self.serial}: benchmark_model did not run: {lines[-1][:300]}")
        return result_from(art, figures, settings, tool)

    def close(self) -> None:
        if self._remote_dir is not None:
            remote, self._remote_dir = self._remote_dir, None
            with contextlib.suppress(DeviceError):
                self._shell("rm", "-rf", remote, what="cleaning up")


def parse_devices(text: str) -> dict[str, str]:
    """``adb devices`` output -> {serial: state}."""
    states = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of", "*")):
            states[parts[0]] = parts[1]
    return states


def parse_benchmark_model(text: str) -> dict[str, Any] | None:
    """The figures in a ``benchmark_model`` log; None when it has no inference timings.

    Uses the lines (current TFLite/LiteRT wording)::

        Initialized session in 87.639ms.
        count=50 first=106022 curr=105780 min=105416 max=106528 avg=105784 std=260 p5=...
            median=105718 p95=...          (the last such line: the regular runs)
        Inference timings in us: Init: 87639, First inference: 106436, Warmup (avg): ...,
            Inference (avg): 105784
        Memory footprint delta from the start of the tool (MB): init=14.44 overall=14.82
            (older: "Peak memory footprint (MB): init=... overall=...")
        Overall peak memory footprint (MB) via periodic monitoring: 20.1
    """
    timings = re.search(
        rf"Inference timings in us: Init: {_NUMBER}, First inference: {_NUMBER}, "
        rf"Warmup \(avg\): {_NUMBER}, Inference \(avg\): {_NUMBER}",
        text,
        re.I,
    )
    if not timings:
        return None
    init_us, first_us, _, avg_us = (float(v) for v in timings.groups())
    before = text[: timings.start()]
    counts = re.findall(r"count=\d+[^\n]*", before)
    stats = dict(re.findall(rf"(\w+)={_NUMBER}", counts[-1])) if counts else {}
    memory = re.search(
        rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
        rf"init={_NUMBER} overall={_NUMBER}",
        text,
    )
    peak = re.search(rf"Overall peak memory footprint \(MB\)[^:]*: {_NUMBER}", text)

    def us(key: str) -> float | None:
        return float(stats[key]) / 1e3 if key in stats else None

    return {
        "load_ms": init_us / 1e3,
        "first_ms": first_us / 1e3,
        "runs": int(float(stats["count"])) if "count" in stats else None,
        "mean": us("avg") if "avg" in stats else avg_us / 1e3,
        "std": us("std"),
        "min": us("min"),
        "max": us("max"),
        "p50": us("median"),
        "init_increase_mib": float(memory.group(1)) if memory else None,
        "increase_mib": float(memory.group(2)) if memory else None,
        "peak_mib": float(peak.group(1)) if peak else None,
    }


def result_from(art: Any, f: dict[str, Any], settings: dict[str, Any], tool: str) -> dict:
    mean, std = f["mean"], f["std"]
    notes = ["benchmark_model reports no p90/p99; p50 is its median"]
    if f["p50"] is None:
        notes.append("this benchmark_model build prints no median either")
    if f["peak_mib"] is None:
        notes.append("no periodic peak-memory figure in the log")
    return {
        "artifact": str(art.path),
        "backend": art.backend,
        "files": art.files_json(),
        "size_bytes": art.size_bytes,
        "runtime": {
            "name": "tflite",
            "version": None,
            "tool": "benchmark_model",
            "accelerator": "CPU",
            "threads": settings.get("threads") or 1,  # benchmark_model's own default is 1
            "details": {"binary": tool},
        },
        "precision": {"artifact": art.precision, "effective": None},
        "inputs": [],
        "timing_ms": {
            "load": f["load_ms"],
            "first_inference": f["first_ms"],
            "runs": f["runs"],
            "p50": f["p50"],
            "p90": None,
            "p99": None,
            "min": f["min"],
            "max": f["max"],
            "mean": mean,
            "std": std,
            "cv": std / mean if std is not None and mean else None,
        },
        "throughput_ips": 1e3 / mean if mean else None,
        "memory_mib": {
            "idle": None,
            "peak": f["peak_mib"],
            "increase": f["increase_mib"],
            "process_peak": f["peak_mib"],
            "method": "benchmark_model: max RSS delta from the tool's start",
        },
        "vs_first": {},
        "notes": notes,
    }


DEVICE_CLASS = AdbDevice
