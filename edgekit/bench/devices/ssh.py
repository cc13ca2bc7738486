"""A Linux board over OpenSSH: ``ssh://[user@]host[:port]``.

The system ``ssh``/``scp`` do the work, so host keys, keys and proxies are checked and used as
the user's ssh is configured (``~/.ssh/config``, or ``--ssh-config FILE``). ``BatchMode=yes``
makes a missing key fail instead of prompting; ``ConnectTimeout`` bounds an unreachable host;
every command has a run timeout. The runner files, the artifact's files and the inputs go to a
``mktemp -d`` folder on the device that is removed at the end, also after a failure. Every
argument of a remote command is quoted with ``shlex.quote`` (the remote shell joins them).
The spec is parsed strictly and ``--`` ends ssh's and scp's options before the destination, so
nothing in ``--device`` can become an ssh option (``ssh://-oProxyCommand=...@host``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.bench.devices import shown
from edgekit.bench.devices.process import ErrorFor, RunnerProcess
from edgekit.bench.runners import HARNESS
from edgekit.errors import DeviceError, EdgekitError, UsageError

_UNREACHABLE = (
    "connection refused",
    "timed out",
    "no route to host",
    "could not resolve hostname",
    "network is unreachable",
    "connection reset",
    "connection closed",
    "name or service not known",
)
_EXPECTED = "expected ssh://[user@]host[:port], e.g. ssh://pi@192.168.1.7"
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_HOST_KEY = (
    "host key verification failed",
    "remote host identification has changed",
    "host key for",
)


class SshDevice:
    protocol = "runner"
    kind = "ssh"
    remote = True
    accelerator = None

    def __init__(
        self,
        spec: str,
        python: str | None = None,
        ssh_config: str | Path | None = None,
        ssh_options: Sequence[str] = (),
        connect_timeout: float = 10.0,
        timeout: float = 600.0,
        **_: Any,
    ) -> None:
        self.user, self.host, self.port = parse_spec(spec)
        self.spec = spec
        self._target = f"{self.user}@{self.host}" if self.user else self.host
        self._python = python or os.environ.get("EDGEKIT_REMOTE_PYTHON") or "python3"
        config = ssh_config or os.environ.get("EDGEKIT_SSH_CONFIG")
        self._opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(connect_timeout))}"]
        self._opts += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if config:
            self._opts += ["-F", str(config)]
        for opt in ssh_options:
            # -o OPT is on purpose (the user's own ssh settings), but a value that is itself an
            # option, or a newline that starts another config line, is not an ssh setting.
            if opt.startswith("-") or "\n" in opt or "\r" in opt:
                raise UsageError(
                    f"--ssh-option {shown(opt)}: expected one ssh_config setting such as "
                    "Port=2222 (no leading '-', no newline)"
                )
            self._opts += ["-o", opt]
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._remote_dir: str | None = None
        self._stage = Path(tempfile.mkdtemp(prefix="edgekit-ssh-"))
        self._count = 0
        self._legacy_scp = False

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "python": self._python,
        }

    def _ssh(self, command: str) -> list[str]:
        port = ["-p", str(self.port)] if self.port else []
        # "--" ends ssh's options, so the destination can never be read as one.
        return ["ssh", *self._opts, *port, "--", self._target, command]

    def _scp(self, local: Path, remote: str) -> list[str]:
        port = ["-P", str(self.port)] if self.port else []
        legacy = ["-O"] if self._legacy_scp else []
        # scp splits host from path at the first ':' outside brackets: an IPv6 host needs them.
        host = f"[{self.host}]" if ":" in self.host else self.host
        dest = f"{self.user}@{host}" if self.user else host
        # No -q: it silences ssh's own diagnostics, and the retry below needs its stderr.
        return ["scp", "-r", *legacy, *self._opts, *port, "--", str(local), f"{dest}:{remote}/"]

    def _run(self, argv: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as exc:
            raise DeviceError(
                f"{argv[0]} not found: install the OpenSSH client (e.g. apt install openssh-client)"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(
                f"{self.where}: {what} did not finish within {timeout:.0f} s; check the device "
                "or raise --timeout"
            ) from exc

    def _call(self, argv: list[str], what: str, timeout: float) -> str:
        done = self._run(argv, what, timeout)
        if done.returncode != 0:
            raise ssh_error(self.where, done.returncode, done.stderr, what)
        return done.stdout

    def _ensure_dir(self) -> str:
        if self._remote_dir is None:
            out = self._call(
                self._ssh('mktemp -d "${TMPDIR:-/tmp}/edgekit-bench.XXXXXX"'),
                "creating a work folder",
                self._connect_timeout + 30,
            )
            lines = out.strip().splitlines()
            if not lines or not lines[-1].startswith("/"):
                raise DeviceError(f"{self.where}: mktemp -d gave no folder (got {out.strip()!r})")
            self._remote_dir = lines[-1]
        return self._remote_dir

    def start(
        self,
        runner: Path,
        files: Sequence[Path],
        args: Sequence[str],
        inputs: Path | None,
        label: str,
        error_for: ErrorFor,
    ) -> RunnerProcess:
        remote = self._ensure_dir()
        self._count += 1
        sub = f"a{self._count}"
        stage = self._stage / sub
        stage.mkdir()
        # The runner lives in its backend's package and the harness in edgekit/bench/runners;
        # on the device they sit side by side, so that the runner's `import _harness` works.
        for f in [HARNESS, runner, *files, *([inputs] if inputs else [])]:
            _link(f, stage / f.name)
        self._copy(stage, remote)
        base = f"{remote}/{sub}"
        argv = [self._python, f"{base}/{runner.name}", f"{base}/{files[0].name}", *args]
        argv += ["--inputs", f"{base}/{inputs.name}" if inputs else "random"]
        command = " ".join(shlex.quote(a) for a in argv)
        return RunnerProcess(
            self._ssh(command),
            label=label,
            timeout=self._timeout,
            error_for=error_for,
            exit_error=lambda code, err: _runner_exit(self.where, self._python, code, err),
        )

    def _copy(self, local: Path, remote: str) -> None:
        argv = self._scp(local, remote)
        what = "copying the runner and artifact"
        done = self._run(argv, what, self._timeout)
        if done.returncode == 0:
            return
        if not self._legacy_scp and sftp_missing(done.stderr):
            # scp speaks SFTP since OpenSSH 9; on boards whose sshd has no sftp subsystem the
            # classic scp protocol (-O) still works. Any other failure is reported as it is.
            self._legacy_scp = True
            self._copy(local, remote)
            return
        raise ssh_error(self.where, done.returncode, done.stderr, what)

    def close(self) -> None:
        """Remove the device's work folder and the local staging copy."""
        shutil.rmtree(self._stage, ignore_errors=True)
        if self._remote_dir is None:
            return
        remote, self._remote_dir = self._remote_dir, None
        # A failed clean-up must not hide the error or result the user is about to see.
        with contextlib.suppress(DeviceError):
            self._call(
                self._ssh(f"rm -rf -- {shlex.quote(remote)}"),
                "removing the work folder",
                self._connect_timeout + 30,
            )


def parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    """(user, host, port) of ``ssh://[user@]host[:port]``, or a UsageError saying what is wrong.

    Parsed by hand rather than with urllib, which raises bare ValueErrors, decodes nothing and
    accepts users and hosts that ssh would read as options (``-oProxyCommand=...``)."""

    def refuse(reason: str) -> UsageError:
        return UsageError(f"--device {shown(spec)}: {reason}; {_EXPECTED}")

    scheme, sep, rest = spec.partition("://")
    if not sep or scheme.lower() != "ssh":
        raise refuse("not an ssh:// address")
    if "%" in rest:
        # Refused rather than decoded: %2D would otherwise be a '-' that no check here saw.
        raise refuse("percent-encoding is not accepted")
    user: str | None
    user, at, hostport = rest.rpartition("@")
    if not at:
        user = None
    elif reason := _bad_name("user", user):
        raise refuse(reason)
    if hostport.endswith("/"):
        hostport = hostport[:-1]
    if any(c in hostport for c in "/?#"):
        raise refuse("a path, query or fragment is not accepted")
    if hostport.startswith("["):
        inner, bracket, after = hostport[1:].partition("]")
        if not bracket:
            raise refuse("the IPv6 address has no closing ']'")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise refuse(f"{inner!r} is not an IPv6 address") from None
        host = inner
        if after and not after.startswith(":"):
            raise refuse(f"unexpected {after!r} after the IPv6 address")
        port_text = after[1:] if after else None
    else:
        if hostport.count(":") > 1:
            raise refuse("an IPv6 address goes in brackets, as in ssh://pi@[fe80::1]")
        host, colon, port_text = hostport.partition(":")
        if reason := _bad_name("host", host):
            raise refuse(reason)
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise refuse(f"{host!r} is not an IPv4 address") from None
        port_text = port_text if colon else None
    port = None
    if port_text is not None:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
            raise refuse(f"the port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return user, host, port


def _bad_name(what: str, name: str) -> str | None:
    """Why ``name`` is no valid user or host name, or None when it is one."""
    if not name:
        return f"the {what} is empty"
    if name.startswith("-"):
        return f"the {what} {name!r} starts with '-', which ssh would read as an option"
    if not _NAME.fullmatch(name):
        return f"the {what} {name!r} may contain only letters, digits, '.', '_' and '-'"
    return None


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sftp_missing(stderr: str) -> bool:
    """Whether scp (SFTP mode) failed because the server has no sftp subsystem.

    An sshd without ``Subsystem sftp`` (or Dropbear without sftp-server) refuses the request,
    and ssh says "subsystem request failed on channel 0". An sshd whose configured sftp-server
    binary is absent just closes the channel: scp's "Connection closed" is then the only line,
    whereas ssh's own failures (key refused, host key, unreachable, server timeout) print their
    reason before it."""
    lines = [ln.strip().lower() for ln in stderr.splitlines() if ln.strip()]
    if any("subsystem request failed" in ln for ln in lines):
        return True
    return lines == ["scp: connection closed"]


def ssh_error(where: str, code: int, stderr: str, what: str) -> EdgekitError:
    """One clear line for why ssh/scp failed: unreachable, key refused, unknown host key."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else f"exit code {code}"
    low = stderr.lower()
    if "permission denied" in low or "too many authentication failures" in low:
        return DeviceError(
            f"{where}: authentication failed ({last}); check the user name and that your public "
            "key is in the device's ~/.ssh/authorized_keys (passwords are not asked: BatchMode)"
        )
    if any(s in low for s in _HOST_KEY):
        return DeviceError(
            f"{where}: host key not verified ({last}); connect once with ssh to check and "
            "record the device's host key in known_hosts"
        )
    if any(s in low for s in _UNREACHABLE):
        return DeviceError(
            f"{where}: unreachable ({last}); check the address and port, and that sshd runs there"
        )
    return DeviceError(f"{where}: {what} failed ({last})")


def _runner_exit(where: str, python: str, code: int, stderr: str) -> EdgekitError:
    if code == 255:
        return ssh_error(where, code, stderr, "running the benchmark")
    if code == 127:
        return DeviceError(
            f"{where}: '{python}' was not found on the device; install Python 3 with numpy there "
            "or pass --remote-python PATH"
        )
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else "no message"
    if "numpy" in last and ("ModuleNotFoundError" in last or "ImportError" in last):
        return DeviceError(f"{where}: numpy is missing for {python} on the device: {last}")
    return DeviceError(f"{where}: the runner stopped (exit code {code}): {last}")


DEVICE_CLASS = SshDevice
