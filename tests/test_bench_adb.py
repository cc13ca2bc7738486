"""``--device adb://SERIAL`` against a stand-in ``adb`` executable (no phone exists here).

The fake is a small script put first on PATH. It keeps a fake device file system in a folder,
logs every command line it gets, answers ``devices``, ``push`` and ``shell`` like adb does
(shell arguments joined by spaces and split again by the device's shell), and answers
``benchmark_model`` with a log in the real tool's format, only if the pushed model is there.
"""

# ruff: noqa: E501  (the canned tool output keeps the real tool's long lines)
from __future__ import annotations

import json
import os
import shlex
import sys
import textwrap

import pytest

import edgekit
from edgekit.backends import backend_names, get_backend
from edgekit.bench.devices.adb import AdbDevice, parse_benchmark_model, parse_devices
from edgekit.bench.harness import Artifact
from edgekit.cli import main
from edgekit.errors import ConversionError, DeviceError, UsageError
from edgekit.schema_check import validate

SERIAL = "R5CT10ABCDE"

# A benchmark_model log as the current TFLite/LiteRT tool prints it (values made up).
BENCHMARK_LOG = textwrap.dedent(
    """\
    INFO: STARTING!
    INFO: Log parameter values verbosely: [0]
    INFO: Num threads: [2]
    INFO: Graph: [{graph}]
    INFO: Loaded model {graph}
    INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
    INFO: The input model file size (MB): {size_mb}
    INFO: Initialized session in 6.395ms.
    INFO: Running benchmark for at least 5 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
    INFO: count=5 first=2761 curr=2885 min=2605 max=18080 avg=5243.58 std=6165 p5=2605 median=2761 p95=18080

    INFO: Running benchmark for at least 50 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
    INFO: count=50 first=2881 curr=2703 min=2605 max=20356 avg=2942.27 std=1190 p5=2647 median=2781 p95=3169

    INFO: Inference timings in us: Init: 6395, First inference: 2761, Warmup (avg): 5243.58, Inference (avg): 2942.27
    INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
    INFO: Memory footprint delta from the start of the tool (MB): init=39.4531 overall=40.8281
    INFO: Overall peak memory footprint (MB) via periodic monitoring: 45.2383
    INFO: Memory status at the end of exeution:
    INFO: - VmRSS              : 44 MB
    INFO: + RssAnnon           : 38 MB
    INFO: + RssFile + RssShmem : 6 MB
    """
)

ARM_CPUINFO = textwrap.dedent(
    """\
    processor\t: 0
    BogoMIPS\t: 38.40
    Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
    CPU implementer\t: 0x41
    CPU part\t: 0xd05

    processor\t: 1
    Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
    Hardware\t: Qualcomm Technologies, Inc SM8150
    """
)

FAKE_ADB = '''\
#!{python}
"""Stand-in adb for tests: devices, push, shell."""
import json, os, shlex, shutil, sys

root, log = os.environ["FAKE_ADB_ROOT"], os.environ["FAKE_ADB_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args == ["devices"]:
    state = os.environ.get("FAKE_ADB_STATE", "device")
    print("List of devices attached")
    if state != "none":
        print("{serial}\\t" + state)
    print()
    sys.exit(0)
if args[:2] != ["-s", "{serial}"]:
    print("adb: device '" + args[1] + "' not found", file=sys.stderr)
    sys.exit(1)
args = args[2:]
local = lambda p: os.path.join(root, p.lstrip("/"))
if args[0] == "push":
    if os.environ.get("FAKE_ADB_DROP_PUSH"):  # the file never arrives
        sys.exit(0)
    os.makedirs(os.path.dirname(local(args[2])), exist_ok=True)
    shutil.copy(args[1], local(args[2]))
    print(args[1] + ": 1 file pushed.")
    sys.exit(0)
assert args[0] == "shell" and len(args) == 2, args
script = args[1]
if script.startswith("getprop"):
    print("Pixel 4")
    print("---")
    print(open(os.environ["FAKE_ADB_CPUINFO"]).read())
    sys.exit(0)
if "command -v benchmark_model" in script:
    if os.path.exists(local("/data/local/tmp/benchmark_model")):
        print("/data/local/tmp/benchmark_model")
    sys.exit(0)
words = shlex.split(script)
if words[:2] == ["mktemp", "-d"]:
    path = words[2].replace("XXXXXX", "a1b2c3")
    os.makedirs(local(path))
    print(path)
elif words[0] == "chmod":
    os.chmod(local(words[2]), int(words[1], 8))
elif words[:2] == ["rm", "-rf"]:
    shutil.rmtree(local(words[2]))
else:
    if words[0] == "taskset":
        words = words[2:]
    if not os.access(local(words[0]), os.X_OK):
        print("/system/bin/sh: " + words[0] + ": not found", file=sys.stderr)
        sys.exit(127)
    graph = [w.split("=", 1)[1] for w in words if w.startswith("--graph=")][0]
    if not os.path.exists(local(graph)):
        print("ERROR: Could not open '" + graph + "'.")
        sys.exit(1)
    size = os.path.getsize(local(graph)) / 1e6
    print(open(os.environ["FAKE_ADB_LOG_TEXT"]).read().format(graph=graph, size_mb=size))
'''


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """Put the stand-in adb first on PATH; returns (device root, read_log)."""
    bin_dir, root = tmp_path / "bin", tmp_path / "device"
    bin_dir.mkdir()
    (root / "data/local/tmp").mkdir(parents=True)
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable, serial=SERIAL))
    adb.chmod(0o755)
    (tmp_path / "log.txt").write_text(BENCHMARK_LOG)
    (tmp_path / "cpuinfo").write_text(ARM_CPUINFO)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_ADB_LOG_TEXT", str(tmp_path / "log.txt"))
    monkeypatch.setenv("FAKE_ADB_CPUINFO", str(tmp_path / "cpuinfo"))

    def calls() -> list[list[str]]:
        path = tmp_path / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return root, calls


@pytest.fixture
def tflite_artifact(tmp_path) -> Artifact:
    # The device never parses it: the fake's benchmark_model only checks it was pushed.
    path = tmp_path / "model dir" / "net_int8.tflite"
    path.parent.mkdir()
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(2000))
    runner = get_backend("tflite").runner
    return Artifact(path, "tflite", "tflite", runner, (path,), "int8")


SETTINGS = {"runs": 50, "warmup": 5, "duration_s": None, "threads": 2, "pin": None}


def test_adb_fake_parses_benchmark_model_output(fake_adb, tflite_artifact, tmp_path):
    root, _ = fake_adb
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    device = AdbDevice(f"adb://{SERIAL}", benchmark_binary=str(binary))
    try:
        result = device.measure(tflite_artifact, SETTINGS, None)
    finally:
        device.close()
    t, m = result["timing_ms"], result["memory_mib"]
    # Figures read off BENCHMARK_LOG by hand: the regular run's count line, in ms.
    assert t["runs"] == 50
    assert (t["p50"], t["min"], t["max"]) == (2.781, 2.605, 20.356)
    assert t["mean"] == pytest.approx(2.94227) and t["std"] == pytest.approx(1.190)
    assert t["cv"] == pytest.approx(1190 / 2942.27)
    assert t["p90"] is None and t["p99"] is None
    assert t["load"] == pytest.approx(6.395) and t["first_inference"] == pytest.approx(2.761)
    assert result["throughput_ips"] == pytest.approx(1e6 / 2942.27)
    assert (m["increase"], m["peak"]) == (40.8281, 45.2383)
    assert result["runtime"]["tool"] == "benchmark_model" and result["runtime"]["threads"] == 2
    assert result["precision"]["artifact"] == "int8"
    info = device.describe()
    assert info["product"] == "Pixel 4"
    assert info["cpu"]["model"] == "Qualcomm Technologies, Inc SM8150"
    assert info["cpu"]["isa"] == ["asimd", "asimdhp", "asimddp"]
    # The whole document with this result conforms to the schema.
    doc = {
        "schema": "edgekit.benchmark",
        "schema_version": 1,
        "edgekit_version": "x",
        "created": "x",
        "device": info,
        "settings": {**SETTINGS, "rounds": 1, "interleaved": False, "inputs": "random"},
        "results": [{**result, "vs_first": {"p50": 1.0, "mean": 1.0}}],
    }
    assert validate(doc) == []
    # The remote work folder is gone after close().
    assert list((root / "data/local/tmp").iterdir()) == []


def test_adb_fake_command_lines(fake_adb, tflite_artifact, tmp_path):
    root, calls = fake_adb
    (root / "data/local/tmp/benchmark_model").write_bytes(b"\x7fELF")
    (root / "data/local/tmp/benchmark_model").chmod(0o755)
    device = AdbDevice(f"adb://{SERIAL}")
    try:
        device.measure(tflite_artifact, {**SETTINGS, "pin": "4-7", "duration_s": 2.5}, None)
    finally:
        device.close()
    log = calls()
    assert log[0] == ["devices"]
    push = [c for c in log if c[2:3] == ["push"]]
    assert push == [
        [
            "-s",
            SERIAL,
            "push",
            os.path.realpath(tflite_artifact.path),
            "/data/local/tmp/edgekit.a1b2c3/net_int8.tflite",
        ]
    ]
    (run,) = [c for c in log if c[2:3] == ["shell"] and "--graph=" in c[3]]
    # One shell string, each word quoted so the device's shell splits it back exactly.
    assert shlex.split(run[3]) == [
        "taskset",
        "f0",  # CPUs 4-7
        "/data/local/tmp/benchmark_model",
        "--graph=/data/local/tmp/edgekit.a1b2c3/net_int8.tflite",
        "--num_runs=50",
        "--warmup_runs=5",
        "--warmup_min_secs=0",
        "--min_secs=2.5",
        "--report_peak_memory_footprint=true",
        "--num_threads=2",
    ]
    assert shlex.split(log[-1][3]) == ["rm", "-rf", "/data/local/tmp/edgekit.a1b2c3"]


def test_adb_fake_pushes_the_file_a_symlinked_artifact_points_to(fake_adb, tmp_path):
    """adb pushes a symlink as a symlink, which would dangle on the device: the real file goes."""
    root, calls = fake_adb
    (root / "data/local/tmp/benchmark_model").write_bytes(b"\x7fELF")
    (root / "data/local/tmp/benchmark_model").chmod(0o755)
    real = tmp_path / "store" / "blob"
    real.parent.mkdir()
    real.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(100))
    link = tmp_path / "linked.tflite"
    link.symlink_to(real)
    art = Artifact(link, "tflite", "tflite", get_backend("tflite").runner, (link,), None)
    device = AdbDevice(f"adb://{SERIAL}")
    try:
        device.measure(art, SETTINGS, None)
    finally:
        device.close()
    (push,) = [c for c in calls() if c[2:3] == ["push"]]
    # Named after the link on the device (it keeps the .tflite suffix), read from the file.
    assert push[3:] == [str(real.resolve()), "/data/local/tmp/edgekit.a1b2c3/linked.tflite"]


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("none", f"adb has no device '{SERIAL}' \\(connected: none\\)"),
        ("unauthorized", "accept the USB debugging prompt"),
        ("offline", "is offline: reconnect it"),
    ],
)
def test_adb_fake_devices_states(fake_adb, tflite_artifact, monkeypatch, state, message):
    monkeypatch.setenv("FAKE_ADB_STATE", state)
    with pytest.raises(DeviceError, match=message):
        AdbDevice(f"adb://{SERIAL}").measure(tflite_artifact, SETTINGS, None)


def test_adb_fake_without_benchmark_model(fake_adb, tflite_artifact):
    device = AdbDevice(f"adb://{SERIAL}")
    with pytest.raises(DeviceError, match="benchmark_model is not on the device"):
        device.measure(tflite_artifact, SETTINGS, None)
    device.close()


def test_adb_missing_executable(tflite_artifact, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no adb anywhere
    with pytest.raises(DeviceError, match="adb not found"):
        AdbDevice(f"adb://{SERIAL}").measure(tflite_artifact, SETTINGS, None)


def test_adb_refuses_other_formats_and_input_files(tflite_artifact, tmp_path):
    onnx_art = Artifact(
        tmp_path / "m.onnx", "onnxruntime", "onnx", get_backend("onnxruntime").runner, (), None
    )
    with pytest.raises(UsageError, match=r"\.tflite files only"):
        AdbDevice(f"adb://{SERIAL}").measure(onnx_art, SETTINGS, None)
    with pytest.raises(UsageError, match="inputs FILE is not supported"):
        AdbDevice(f"adb://{SERIAL}").measure(tflite_artifact, SETTINGS, tmp_path / "x.npz")


def test_adb_fake_benchmark_model_refuses_the_model(fake_adb, tflite_artifact, monkeypatch):
    """The tool runs but cannot open the model: ConversionError with the tool's ERROR line."""
    root, _ = fake_adb
    binary = root / "data/local/tmp/benchmark_model"
    binary.write_bytes(b"\x7fELF")
    binary.chmod(0o755)
    monkeypatch.setenv("FAKE_ADB_DROP_PUSH", "1")
    device = AdbDevice(f"adb://{SERIAL}")
    try:
        with pytest.raises(ConversionError, match="ERROR: Could not open"):
            device.measure(tflite_artifact, SETTINGS, None)
    finally:
        device.close()


def test_adb_fake_binary_path_not_on_device(fake_adb, tflite_artifact):
    device = AdbDevice(f"adb://{SERIAL}", benchmark_binary="/data/local/tmp/nope")
    try:
        with pytest.raises(DeviceError, match=r"benchmark_model did not run: .*not found"):
            device.measure(tflite_artifact, SETTINGS, None)
    finally:
        device.close()


def test_parse_devices_and_older_memory_line():
    assert parse_devices("List of devices attached\nA1\tdevice\n10.0.0.2:5555\toffline\n\n") == {
        "A1": "device",
        "10.0.0.2:5555": "offline",
    }
    old = (
        "count=20 first=900 curr=800 min=700 max=1000 avg=850 std=50\n"
        "Inference timings in us: Init: 1000, First inference: 900, Warmup (avg): 900, "
        "Inference (avg): 850\nPeak memory footprint (MB): init=1.5 overall=2.25\n"
    )
    f = parse_benchmark_model(old)
    assert f["p50"] is None and f["mean"] == 0.85 and f["increase_mib"] == 2.25
    assert parse_benchmark_model("ERROR: Could not open 'x'.") is None


def test_adb_fake_through_the_api_and_cli(fake_adb, tflite_artifact, tmp_path, capsys):
    if "tflite" not in backend_names():
        pytest.skip("the tflite backend is not registered yet")
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    result = edgekit.benchmark(
        tflite_artifact.path, device=f"adb://{SERIAL}", benchmark_binary=str(binary), runs=50
    )
    doc = result.to_json()
    assert validate(doc) == []
    assert doc["device"]["kind"] == "adb" and doc["device"]["product"] == "Pixel 4"
    assert doc["settings"]["interleaved"] is False
    assert doc["results"][0]["timing_ms"]["p50"] == 2.781
    argv = ["benchmark", str(tflite_artifact.path), "-d", f"adb://{SERIAL}"]
    assert main([*argv, "--benchmark-binary", str(binary)]) == 0
    table = capsys.readouterr().out
    assert "benchmark_model reports no p90/p99" in table and "2.781" in table
    assert main([*argv, "--inputs", str(binary)]) == 5  # not a .npz/.npy
