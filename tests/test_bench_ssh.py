"""``edgekit benchmark --device ssh://`` against a real OpenSSH server started on 127.0.0.1.

The fixture generates its own host key and client key, writes the known_hosts entry from the
host key (host keys stay checked) and an ssh config that points at them. The "remote" python
is this machine's interpreter, which has the runtimes. Outside CI the tests skip when sshd is
not installed (``make test`` installs openssh-server); with CI=true they fail instead.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import linear_model

import edgekit
from edgekit.bench.devices.ssh import SshDevice
from edgekit.cli import main
from edgekit.errors import DeviceError


def _sshd_binary() -> str:
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if found is None:
        message = "sshd is not installed (make test installs openssh-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the ssh benchmark test")
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit-test", "-f", str(path)],
        check=True,
    )


def _start_sshd(d: Path, sftp: bool | str):
    """sshd -D on 127.0.0.1:PORT with keys in ``d``; (process, port). Host keys stay checked:
    the known_hosts entry is written from the generated host key. ``sftp``: True for the
    internal sftp server, False for no sftp subsystem, or the sftp-server command to configure."""
    binary = _sshd_binary()
    _keygen(d / "host_key")
    _keygen(d / "id_client")
    (d / "authorized_keys").write_text((d / "id_client.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        + (f"Subsystem sftp {'internal-sftp' if sftp is True else sftp}\n" if sftp else "")
    )
    host_key = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (d / "ssh_config").write_text(
        "Host *\n"
        f"  IdentityFile {d / 'id_client'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {d / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    with open(d / "sshd.log", "wb") as log:
        proc = subprocess.Popen([binary, "-D", "-e", "-f", str(d / "sshd_config")], stderr=log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()[-800:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    pytest.fail("sshd did not start listening within 15 s")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    """A running sshd (with the sftp subsystem, like a stock install): (user, port, dir)."""
    d = tmp_path_factory.mktemp("sshd")
    proc, port = _start_sshd(d, sftp=True)
    yield getpass.getuser(), port, d
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("model") / "linear.onnx"
    w, b = rng.random((16, 8), np.float32), rng.random(8, np.float32)
    onnx.save(linear_model(w, b, input_shape=("N", 16)), path)
    return path


def _remote_dirs() -> set[str]:
    tmp = os.environ.get("TMPDIR", "/tmp")
    return {p for p in os.listdir(tmp) if p.startswith("edgekit-bench.")}


def test_ssh_benchmark_onnx_returns_sane_json(sshd, onnx_file, capsys):
    user, port, d = sshd
    before = _remote_dirs()
    inputs = d / "inputs.npz"
    np.savez(inputs, x=np.ones((3, 16), np.float32))  # copied over; the batch is dynamic
    code = main(
        [
            "benchmark",
            str(onnx_file),
            "--device",
            f"ssh://{user}@127.0.0.1:{port}",
            "--ssh-config",
            str(d / "ssh_config"),
            "--remote-python",
            sys.executable,
            "--runs",
            "30",
            "--warmup",
            "3",
            "--threads",
            "1",
            "--inputs",
            str(inputs),
            "--json",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)
    assert doc["device"]["kind"] == "ssh" and doc["device"]["port"] == port
    assert doc["settings"]["inputs"] == str(inputs)
    # The runner read the device's /proc/cpuinfo: here the same machine as ours.
    assert doc["device"]["cpu"]["logical_cpus"] == os.cpu_count()
    (r,) = doc["results"]
    t = r["timing_ms"]
    assert t["runs"] == 30
    assert 0 < t["min"] <= t["p50"] <= t["p90"] <= t["p99"] <= t["max"]
    assert t["load"] > 0 and t["first_inference"] > 0
    assert r["runtime"]["name"] == "onnxruntime" and r["runtime"]["threads"] == 1
    assert r["inputs"] == [{"name": "x", "dtype": "float32", "shape": [3, 16]}]
    assert r["memory_mib"]["peak"] > r["memory_mib"]["idle"] > 0
    assert r["size_bytes"] == onnx_file.stat().st_size
    # The work folder made on the device is gone again.
    assert _remote_dirs() == before


def test_ssh_unreachable_port_is_a_device_error(sshd, onnx_file):
    _, _, d = sshd
    with pytest.raises(DeviceError, match="unreachable"):
        edgekit.benchmark(
            onnx_file,
            device=f"ssh://nobody@127.0.0.1:{_free_port()}",
            ssh_config=d / "ssh_config",
            connect_timeout=5,
        )


def test_ssh_wrong_key_is_an_auth_failure(sshd, onnx_file, tmp_path):
    user, port, d = sshd
    _keygen(tmp_path / "other_key")
    config = (
        (d / "ssh_config").read_text().replace(str(d / "id_client"), str(tmp_path / "other_key"))
    )
    (tmp_path / "ssh_config").write_text(config)
    with pytest.raises(DeviceError, match="authentication failed"):
        edgekit.benchmark(
            onnx_file, device=f"ssh://{user}@127.0.0.1:{port}", ssh_config=tmp_path / "ssh_config"
        )


def test_ssh_unknown_host_key_is_refused(sshd, onnx_file, tmp_path):
    user, port, d = sshd
    (tmp_path / "known_hosts").write_text("")
    config = (
        (d / "ssh_config")
        .read_text()
        .replace(str(d / "known_hosts"), str(tmp_path / "known_hosts"))
    )
    (tmp_path / "ssh_config").write_text(config)
    with pytest.raises(DeviceError, match="host key not verified"):
        edgekit.benchmark(
            onnx_file, device=f"ssh://{user}@127.0.0.1:{port}", ssh_config=tmp_path / "ssh_config"
        )


def test_ssh_missing_runtime_on_the_device(sshd, onnx_file, tmp_path):
    """A device python without onnxruntime: the runner's import fails and says so."""
    user, port, d = sshd
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(DeviceError, match="onnxruntime is not installed"):
        edgekit.benchmark(
            onnx_file,
            device=f"ssh://{user}@127.0.0.1:{port}",
            ssh_config=d / "ssh_config",
            remote_python=str(bare / "bin" / "python"),
        )


@pytest.mark.parametrize(
    "sftp",
    [False, "/nonexistent/sftp-server"],
    ids=["no-sftp-subsystem", "sftp-server-binary-missing"],
)
def test_ssh_without_sftp_server_falls_back_to_legacy_scp(sftp, onnx_file, tmp_path):
    """Boards whose sshd has no sftp server (none configured, or its binary not installed):
    scp's SFTP mode fails, scp -O works."""
    proc, port = _start_sshd(tmp_path, sftp=sftp)
    try:
        result = edgekit.benchmark(
            onnx_file,
            device=f"ssh://{getpass.getuser()}@127.0.0.1:{port}",
            ssh_config=tmp_path / "ssh_config",
            remote_python=sys.executable,
            runs=5,
            warmup=1,
        )
    finally:
        proc.terminate()
        proc.wait(10)
    assert result.results[0]["timing_ms"]["runs"] == 5


def _stage(tmp_path: Path) -> Path:
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "file.txt").write_text("x")
    return stage


def test_ssh_copy_refused_key_is_not_retried_with_legacy_scp(sshd, tmp_path):
    """Only a missing sftp server earns the scp -O retry; a refused key is reported at once."""
    user, port, d = sshd
    _keygen(tmp_path / "other_key")
    config = (
        (d / "ssh_config").read_text().replace(str(d / "id_client"), str(tmp_path / "other_key"))
    )
    (tmp_path / "ssh_config").write_text(config)
    dev = SshDevice(f"ssh://{user}@127.0.0.1:{port}", ssh_config=tmp_path / "ssh_config")
    try:
        with pytest.raises(DeviceError, match="authentication failed"):
            dev._copy(_stage(tmp_path), str(tmp_path))
        assert dev._legacy_scp is False
    finally:
        dev.close()


def test_ssh_copy_timeout_is_not_retried_with_legacy_scp(sshd, tmp_path):
    """A host that accepts the connection and never answers: the copy's timeout is the error,
    with no second attempt."""
    _, _, d = sshd
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        dev = SshDevice(
            f"ssh://nobody@127.0.0.1:{port}",
            ssh_config=d / "ssh_config",
            connect_timeout=60,
            timeout=2,
        )
        try:
            with pytest.raises(DeviceError, match="did not finish within 2 s"):
                dev._copy(_stage(tmp_path), "/tmp")
            assert dev._legacy_scp is False
        finally:
            dev.close()


def test_build_times_each_cell_on_local_and_an_ssh_device(sshd, onnx_file, tmp_path):
    """edgekit build with a target timed on two devices: this machine and an ssh device (the
    real sshd above). Each device's figures are in the manifest, and a latency budget is
    checked on each, naming the device that missed it."""
    from edgekit.build import build
    from edgekit.errors import BudgetError

    user, port, d = sshd
    shutil.copy(onnx_file, tmp_path / "linear.onnx")
    (tmp_path / "edgekit.toml").write_text(
        "version = 1\n[models.linear]\npath = 'linear.onnx'\ninput_shapes = { x = [1, 16] }\n"
        "[targets.onnxruntime]\nprecisions = ['fp32']\ndevices = ['local', 'box']\n"
        "[targets.onnxruntime.budgets]\nmax_p50_ms = 1e-6\n"
        f"[devices.box]\nurl = 'ssh://{user}@127.0.0.1:{port}'\n"
        f"remote_python = '{sys.executable}'\nssh_config = '{d / 'ssh_config'}'\n"
        "[bench]\nruns = 10\n"
    )
    with pytest.raises(BudgetError, match=r"linear/onnxruntime/fp32 max_p50_ms on local"):
        build(tmp_path / "edgekit.toml", tmp_path / "out", cache_dir=tmp_path / "cache")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (cell,) = manifest["cells"]
    assert set(cell["devices"]) == {"local", "box"}
    assert cell["devices"]["box"]["url"] == f"ssh://{user}@127.0.0.1:{port}"
    for figures in cell["devices"].values():
        t = figures["timing_ms"]
        assert t["runs"] == 10 and 0 < t["min"] <= t["p50"] <= t["max"]
    assert cell["p50_ms"] == cell["devices"]["local"]["timing_ms"]["p50"]
    budgets = {b["device"]: b for b in cell["budgets"]}
    assert set(budgets) == {"local", "box"} and not any(b["ok"] for b in budgets.values())
    assert budgets["box"]["value"] == cell["devices"]["box"]["timing_ms"]["p50"]
