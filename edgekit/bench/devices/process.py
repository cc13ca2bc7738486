"""A runner process (local, or ``ssh`` running one on a board) spoken to over stdin/stdout
with the line protocol described in ``runners/_harness.py``."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edgekit.bench.memory import wait_rusage
from edgekit.errors import ConversionError, DeviceError, EdgekitError

ErrorFor = Callable[[str, str], EdgekitError]


class RunnerProcess:
    """Starts ``argv`` and waits for the runner's ``ready`` event.

    ``error_for(kind, message)`` turns a runner's error event into an edgekit error;
    ``exit_error(returncode, stderr)`` explains a process that ended without one (for ssh: an
    unreachable host or a refused key); ``cleanup`` runs once the process is gone; ``env`` is
    the child's environment (default: this process's)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        label: str,
        timeout: float,
        error_for: ErrorFor,
        exit_error: Callable[[int, str], EdgekitError],
        cleanup: Callable[[], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.label = label
        self._timeout = timeout
        self._error_for = error_for
        self._exit_error = exit_error
        self._cleanup = cleanup
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process)
        self.wait4_kb: int | None = None
        try:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                bufsize=1,
                env=None if env is None else dict(env),
            )
        except OSError as exc:
            self._stderr.close()
            raise DeviceError(f"{label}: cannot start {argv[0]}: {exc.strerror}") from exc
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            self.ready: dict[str, Any] = self._receive("ready", timeout)
        except BaseException:
            self.close()
            raise

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        try:
            for line in self._proc.stdout:
                self._lines.put(line)
        except (OSError, ValueError):
            pass  # closed by close() while reading
        self._lines.put(None)

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def _receive(self, expect: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise DeviceError(
                    f"{self.label}: no answer within {timeout:.0f} s; raise --timeout for slow "
                    "devices or large models"
                ) from None
            if line is None:
                self._reap()
                raise self._exit_error(self._proc.returncode, self._stderr_text())
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # a runtime or login banner that reached stdout
            if not isinstance(msg, dict) or "event" not in msg:
                continue
            if msg["event"] == "error":
                self._reap()
                raise self._error_for(str(msg.get("kind")), str(msg.get("message")))
            if msg["event"] != expect:
                raise ConversionError(
                    f"{self.label}: the runner answered '{msg['event']}' instead of '{expect}' "
                    "(a runner from another edgekit version?)"
                )
            return msg

    def _send(self, cmd: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(cmd) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the process is gone; _receive reports why

    def warmup(self, n: int) -> None:
        if n > 0:
            self._send({"cmd": "warmup", "n": n})
            self._receive("ok", self._timeout)

    def run(self, n: int, seconds: float = 0.0) -> list[float]:
        self._send({"cmd": "run", "n": n, "seconds": seconds})
        return [float(t) for t in self._receive("times", self._timeout + seconds)["ms"]]

    def finish(self) -> dict[str, Any]:
        """Ask the runner to exit; its ``bye`` event (current and peak RSS)."""
        self._send({"cmd": "exit"})
        bye = self._receive("bye", self._timeout)
        self._reap()
        return bye

    def _reap(self) -> None:
        if self._proc.returncode is None:
            if self._proc.stdin:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
            self.wait4_kb = wait_rusage(self._proc, 10.0)

    def close(self) -> None:
        """Stop the process if it still runs and run the device's cleanup; idempotent."""
        if self._proc.returncode is None:
            self._proc.kill()
            self._reap()
        if self._proc.stdout:
            self._proc.stdout.close()
        if not self._stderr.closed:
            self._stderr.close()
        if self._cleanup:
            cleanup, self._cleanup = self._cleanup, None
            cleanup()
