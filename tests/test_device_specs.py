"""``--device`` specs are parsed strictly: nothing in one ever reaches ssh, scp or adb as an option.

Refusals are proven to come before any client starts: fake ``ssh``, ``scp`` and ``adb``
executables (shell scripts that only record that they ran) are put first on PATH, and each
refused spec must leave no record. One valid spec per client shows the fakes would be reached.
The argv checks run the real OpenSSH client in its dry ``-G`` mode, which connects to nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import linear_model

import edgekit
from edgekit.bench import devices
from edgekit.bench.devices.ssh import SshDevice, parse_spec
from edgekit.errors import DeviceError, UsageError

REFUSED_SSH = [
    "ssh://[::1",  # unclosed IPv6 bracket: urllib's bare ValueError before
    "ssh://-V@x",
    "ssh://-oProxyCommand=touch${IFS}/tmp/x@host",
    "ssh://-oProxyCommand=x",  # no user: the "host" is the option
    "ssh://us er@h",
    "ssh://u@-host",
    "ssh://u@h:0",
    "ssh://u@h:70000",
    "ssh://u@h:",
    "ssh://u@h:-22",
    "ssh://u@h:+22",
    "ssh://u@h:2\u0662",  # a non-ASCII digit
    "ssh://u@h/path",
    "ssh://u@h?x",
    "ssh://u@h#x",
    "ssh://%2DV@host",
    "ssh://u@%2Dhost",
    "ssh://u@[fe80::1%25eth0]",
    "ssh://@host",
    "ssh://u@",
    "ssh://u:pw@h",
    "ssh://u\n@h",
    "ssh://u\t@h",
    "ssh://u@h\x7f",
    "ssh://u@h;id",
    "ssh://u@::1",
    "ssh://u@[::1]x",
    "ssh://u@[not-an-ip]",
    "ssh://u@999.1.1.1",
    "ssh://u@h\u00f3st",
]
REFUSED_ADB = [
    "adb://",
    "adb://-s",
    "adb://--help",
    "adb://a b",
    "adb://a\nb",
    "adb://%2Ds",
    "adb://a;reboot",
    "adb://$(reboot)",
    "adb://emulator-5554/x",
    "adb://R5C\x1b[31m",
]


@pytest.fixture
def fake_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake ssh, scp and adb first on PATH (no device exists here); returns the marker file
    that any of them creates when it is started."""
    bin_dir, marker = tmp_path / "fake-bin", tmp_path / "client-ran"
    bin_dir.mkdir()
    for name in ("ssh", "scp", "adb"):
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\necho "{name} $*" >> "{marker}"\nexit 255\n')
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return marker


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("model") / "linear.onnx"
    onnx.save(linear_model(rng.random((4, 2), np.float32), rng.random(2, np.float32)), path)
    return path


def _expected(spec: str) -> str:
    return "expected ssh://" if spec.startswith("ssh") else "expected adb://SERIAL"


@pytest.mark.parametrize("spec", REFUSED_SSH + REFUSED_ADB)
def test_fake_clients_never_start_for_a_refused_spec(spec, fake_clients, onnx_file):
    with pytest.raises(UsageError, match=_expected(spec)) as raised:
        devices.resolve(spec)
    assert "\n" not in str(raised.value)
    with pytest.raises(UsageError, match=_expected(spec)):
        edgekit.benchmark(onnx_file, device=spec)
    assert not fake_clients.exists()


def test_fake_ssh_is_reached_by_a_valid_spec(fake_clients, onnx_file):
    """The control for the test above: the same set-up does start the fake ssh."""
    with pytest.raises(DeviceError):
        edgekit.benchmark(onnx_file, device="ssh://pi@192.0.2.1")
    assert fake_clients.read_text().startswith("ssh ")


def test_fake_adb_is_reached_by_a_valid_spec(fake_clients):
    with pytest.raises(DeviceError):
        devices.resolve("adb://emulator-5554").check()
    assert fake_clients.read_text().startswith("adb ")


@pytest.mark.parametrize(
    "opt", ["-oProxyCommand=touch /tmp/x", "Port=22\nProxyCommand touch /tmp/x", "Port=22\r"]
)
def test_fake_ssh_never_starts_for_a_refused_ssh_option(opt, fake_clients, onnx_file):
    with pytest.raises(UsageError, match="ssh_options"):
        edgekit.benchmark(onnx_file, device="ssh://pi@192.0.2.1", ssh_options=[opt])
    assert not fake_clients.exists()


def test_fake_adb_never_starts_for_a_benchmark_binary_like_an_option(fake_clients):
    with pytest.raises(UsageError, match="may not start with '-'"):
        devices.resolve("adb://emulator-5554", benchmark_binary="-e")
    assert not fake_clients.exists()


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("ssh://pi@192.168.1.7", ("pi", "192.168.1.7", None)),
        ("ssh://board", (None, "board", None)),
        ("SSH://build_box.local:2222/", (None, "build_box.local", 2222)),
        ("ssh://root@[fe80::1]:65535", ("root", "fe80::1", 65535)),
        ("ssh://a-b.c_d@h-1:1", ("a-b.c_d", "h-1", 1)),
    ],
)
def test_valid_specs_parse(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "ssh_dest", "scp_dest"),
    [
        ("ssh://pi@192.168.1.7:2222", "pi@192.168.1.7", "pi@192.168.1.7:/r/"),
        ("ssh://board", "board", "board:/r/"),
        ("ssh://pi@[fe80::1]:2222", "pi@fe80::1", "pi@[fe80::1]:/r/"),
    ],
)
def test_double_dash_right_before_the_destination(spec, ssh_dest, scp_dest):
    dev = SshDevice(spec, ssh_options=["ConnectionAttempts=2"])
    try:
        ssh = dev._ssh("true")
        assert ssh[0] == "ssh" and ssh[-3:] == ["--", ssh_dest, "true"]
        assert ssh.count("--") == 1
        scp = dev._scp(Path("/stage/a1"), "/r")
        assert scp[0] == "scp" and scp[-3:] == ["--", "/stage/a1", scp_dest]
        assert scp.count("--") == 1
        dev._legacy_scp = True
        assert dev._scp(Path("/stage/a1"), "/r")[-3:] == ["--", "/stage/a1", scp_dest]
    finally:
        dev.close()


def test_this_openssh_reads_the_argv_as_meant():
    """ssh -G prints the configuration it would use and connects to nothing."""
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client is not installed")
    dev = SshDevice("ssh://pi@192.168.1.7:2222", ssh_config=os.devnull)
    try:
        argv = dev._ssh("true")
    finally:
        dev.close()
    done = subprocess.run(["ssh", "-G", *argv[1:]], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    config = set(done.stdout.lower().splitlines())
    assert {"user pi", "hostname 192.168.1.7", "port 2222", "batchmode yes"} <= config


def test_cli_malformed_ssh_url_is_a_usage_error(onnx_file):
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    done = subprocess.run(
        [sys.executable, "-m", "edgekit", "benchmark", str(onnx_file), "--device", "ssh://[::1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), done.stderr
    assert "expected ssh://[user@]host[:port]" in lines[0]
    assert "Traceback" not in done.stderr
