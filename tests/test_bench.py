"""The benchmark harness on this machine: statistics against numpy, the three runners on real
artifacts of each runtime, the interleaved flow, memory figures, inputs, errors and the CLI."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import feeds
from onnx_models import conv_model, linear_model

import edgekit
from edgekit import samples
from edgekit.backends import backend_names, get_backend
from edgekit.bench import inputs as bench_inputs
from edgekit.bench import interleave, stats
from edgekit.bench.devices.local import LocalDevice
from edgekit.bench.harness import resolve_artifact
from edgekit.bench.runners import HARNESS
from edgekit.bench.sysinfo import parse_cpuinfo
from edgekit.cli import main
from edgekit.errors import (
    DataError,
    DeviceError,
    EdgekitError,
    MissingDependencyError,
    ModelFormatError,
    ModelNotFoundError,
    UsageError,
)
from edgekit.schema_check import validate

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    "sample",
    [
        [3.0],
        [2.0, 1.0],
        [5.0, 1.0, 4.0, 2.0, 3.0],
        list(RNG.exponential(2.0, 101)),
        list(RNG.lognormal(0.0, 0.5, 1000)),
    ],
    ids=["one", "two", "five", "exp101", "lognormal1000"],
)
def test_stats_match_numpy(sample):
    s = stats.summarize(sample)
    a = np.asarray(sample)
    for q in (50, 90, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(a, q), rel=1e-12)
    assert s["mean"] == pytest.approx(a.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(a.std(), rel=1e-9, abs=1e-15)
    assert s["cv"] == pytest.approx(a.std() / a.mean(), rel=1e-9, abs=1e-15)
    assert (s["min"], s["max"], s["runs"]) == (a.min(), a.max(), len(a))
    assert s["throughput_ips"] == pytest.approx(len(a) / (a.sum() / 1e3))


def test_percentile_by_hand():
    # ranks 0..3 of [10, 20, 30, 40]: p50 at rank 1.5 -> 25, p90 at rank 2.7 -> 37
    assert stats.percentile([40, 10, 30, 20], 50) == 25
    assert stats.percentile([40, 10, 30, 20], 90) == pytest.approx(37)
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_rounds_are_interleaved_and_split_evenly():
    assert interleave.split(10, 3) == [4, 3, 3]
    assert interleave.split(2, 10) == [1, 1]
    order: list[tuple[str, int]] = []

    def run(handle: str, n: int, seconds: float) -> list[float]:
        order.append((handle, n))
        return [1.0] * n

    times = interleave.run_rounds(["A", "B", "C"], 7, 3, 0.0, run)
    assert [h for h, _ in order] == ["A", "B", "C"] * 3
    assert [n for h, n in order if h == "A"] == [3, 2, 2]
    assert [len(t) for t in times] == [7, 7, 7]


def test_cpuinfo_x86_and_arm():
    x86 = (
        "processor\t: 0\nmodel\t\t: 143\nmodel name\t: Intel Xeon\n"
        "flags\t\t: fpu sse4_2 avx2 avx512f avx512_vnni amx_int8\n\nprocessor\t: 1\n"
    )
    info = parse_cpuinfo(x86)
    assert info["model"] == "Intel Xeon" and info["logical_cpus"] == 2
    assert info["isa"] == ["sse4_2", "avx2", "avx512f", "avx512_vnni", "amx_int8"]
    arm = (
        "processor\t: 0\nFeatures\t: fp asimd asimdhp asimddp i8mm\n"
        "CPU implementer\t: 0x41\nCPU part\t: 0xd41\n"
    )
    info = parse_cpuinfo(arm)
    assert info["isa"] == ["asimd", "asimdhp", "asimddp", "i8mm"]
    assert info["model"] == "ARM implementer 0x41 part 0xd41"


# ---------------------------------------------------------------- artifacts of each runtime


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small conv net as ONNX (onnx.helper), OpenVINO IR (ov.convert_model) and TFLite
    (keras -> TFLiteConverter at fp32 and full int8)."""
    d = tmp_path_factory.mktemp("bench_models")
    out = {"onnx": d / "conv.onnx"}
    onnx.save(conv_model(RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)), out["onnx"])
    import openvino as ov

    out["openvino"] = d / "conv.xml"
    ov.save_model(ov.convert_model(str(out["onnx"])), str(out["openvino"]), compress_to_fp16=False)
    out["openvino_fp16"] = d / "conv_fp16.xml"
    ov.save_model(ov.convert_model(str(out["onnx"])), str(out["openvino_fp16"]))
    return out


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import keras
    import tensorflow as tf

    d = tmp_path_factory.mktemp("bench_tflite")
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
    calib = [RNG.random((1, 12, 12, 1), dtype=np.float32) for _ in range(8)]
    paths = {}
    for precision in ("fp32", "fp16", "int8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if precision == "fp16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        if precision == "int8":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([x] for x in calib)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        paths[precision] = d / f"tiny_{precision}.tflite"
        paths[precision].write_bytes(conv.convert())
    return paths


def _start(backend: str, path: Path, *args: str, accelerator: str = "local"):
    """A runner process on this machine: the backend's runner file, without the harness."""

    def error_for(kind: str, message: str) -> EdgekitError:
        return (DeviceError if kind == "device" else EdgekitError)(f"{kind}: {message}")

    return LocalDevice(accelerator).start(
        get_backend(backend).runner, [path], ["--seed", "0", *args], None, path.name, error_for
    )


def _drive(handle, n: int = 5) -> tuple[dict, list[float], dict]:
    try:
        handle.warmup(2)
        times = handle.run(n)
        bye = handle.finish()
    finally:
        handle.close()
    return handle.ready, times, bye


def test_onnxruntime_runner(models):
    import onnxruntime

    ready, times, bye = _drive(_start("onnxruntime", models["onnx"], "--threads", "1"))
    assert ready["runtime"] == "onnxruntime" and ready["version"] == onnxruntime.__version__
    assert ready["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 2, 6, 6]}]
    assert ready["info"]["threads"] == 1
    assert len(times) == 5 and all(t > 0 for t in times)
    assert bye["peak_rss_kb"] >= ready["idle_rss_kb"] > 0


def test_openvino_runner_reports_the_precision_it_compiled_with(models):
    import openvino as ov

    ready, times, _ = _drive(_start("openvino", models["openvino"], "--threads", "1"))
    assert ready["runtime"] == "openvino" and ready["version"] == ov.__version__.split("-")[0]
    assert ready["info"]["threads"] == 1 and len(times) == 5
    # An FP32 IR runs in f32 by default, whatever the CPU plugin would choose on its own.
    assert ready["info"]["inference_precision_hint"] == "f32"
    assert ready["info"]["effective_precision"] == "f32"
    # 'auto', and FP16-compressed IRs by default, get the plugin's own choice on this CPU
    # (bf16 on AVX512-BF16/AMX CPUs, else f32), read here from OpenVINO itself.
    native = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    ready, _, _ = _drive(_start("openvino", models["openvino"], "--inference-precision", "auto"))
    assert ready["info"]["inference_precision_hint"] == native
    assert ready["info"]["layer_precisions"] == {native: 1}  # the one Convolution
    ready, _, _ = _drive(_start("openvino", models["openvino_fp16"]))
    assert ready["info"]["inference_precision_hint"] == native


def test_openvino_runner_absent_accelerator(models):
    with pytest.raises(DeviceError, match="'NPU' is not available"):
        _drive(_start("openvino", models["openvino"], "--accelerator", "NPU"))


def test_tflite_runner_effective_precision(tflite_models):
    found = {}
    for precision, path in tflite_models.items():
        ready, times, _ = _drive(_start("tflite", path, "--threads", "1"))
        assert ready["runtime"] == "litert" and len(times) == 5
        assert ready["inputs"][0]["shape"] == [1, 12, 12, 1]
        found[precision] = ready["info"]["effective_precision"]
    assert found == {"fp32": "fp32", "fp16": "fp32 (fp16 weights)", "int8": "int8"}


ALLOWED_IMPORTS = set(sys.stdlib_module_names) | {
    "numpy",
    "_harness",
    "onnxruntime",
    "onnx",  # optional, host side only: external-data file names
    "openvino",
    "ai_edge_litert",
    "tflite_runtime",
}


def _imports(path: Path) -> set[str]:
    """Top-level package names a file imports anywhere (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_harness_imports_only_stdlib_and_numpy():
    assert _imports(HARNESS) <= set(sys.stdlib_module_names) | {"numpy"}


def test_every_registered_backend_has_a_standalone_runner():
    """A backend joins `edgekit benchmark` with its own runner file (``backend.runner``), which
    imports nothing from edgekit (it is copied to devices next to _harness.py)."""
    for name in backend_names():
        backend = get_backend(name)
        path = backend.runner
        assert path.is_file(), f"no benchmark runner for backend {name}"
        module = backend.runner_module
        assert Path(module.__file__) == path
        for attr in ("RUNTIME", "PIP", "import_runtime", "load", "companion_files"):
            assert hasattr(module, attr), f"{path.name} of {name} lacks {attr}"
        assert _imports(path) <= ALLOWED_IMPORTS, path
        assert backend.suffix


def test_runners_run_as_scripts_next_to_the_harness(models, tflite_models, tmp_path):
    """What a device gets: a runner and _harness.py copied into one folder with the artifact,
    run as a script with nothing of edgekit's folders on the path."""
    artifacts = {"onnxruntime": models["onnx"], "openvino": models["openvino"]}
    artifacts["tflite"] = tflite_models["fp32"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for name in backend_names():
        backend = get_backend(name)
        folder = tmp_path / name
        folder.mkdir()
        art = artifacts[name]
        companions = [Path(f) for f in backend.runner_module.companion_files(str(art))]
        for f in (HARNESS, backend.runner, art, *companions):
            shutil.copy(f, folder / f.name)
        done = subprocess.run(
            [sys.executable, str(folder / backend.runner.name), str(folder / art.name)],
            input='{"cmd": "exit"}\n',
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
        assert done.returncode == 0, (name, done.stderr[-2000:])
        events = [json.loads(line)["event"] for line in done.stdout.splitlines()]
        assert events == ["ready", "bye"], (name, done.stdout)


# ---------------------------------------------------------------- the flow, through the API


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two linear models of the same input, with 40 KB and 40 MB of weights."""
    d = tmp_path_factory.mktemp("pair")
    small, big = d / "small.onnx", d / "big.onnx"
    onnx.save(
        linear_model(RNG.random((100, 100), np.float32), np.zeros(100, np.float32), ("N", 100)),
        small,
    )
    onnx.save(
        linear_model(
            RNG.random((100, 100_000), np.float32), np.zeros(100_000, np.float32), ("N", 100)
        ),
        big,
    )
    return small, big


def test_interleaved_benchmark_json_and_memory_relation(onnx_pair):
    small, big = onnx_pair
    result = edgekit.benchmark([small, big], runs=20, warmup=2, threads=1, rounds=4)
    doc = result.to_json()
    assert validate(doc) == []
    assert json.loads(json.dumps(doc)) == doc
    assert doc["settings"]["interleaved"] and doc["settings"]["rounds"] == 4
    first, second = doc["results"]
    assert first["vs_first"]["p50"] == 1.0
    assert second["vs_first"]["p50"] == pytest.approx(
        second["timing_ms"]["p50"] / first["timing_ms"]["p50"]
    )
    for r, path in ((first, small), (second, big)):
        assert r["size_bytes"] == path.stat().st_size
        assert r["timing_ms"]["runs"] == 20
        m = r["memory_mib"]
        assert (
            m["idle"] > 0
            and m["increase"] > 0
            and m["peak"] == pytest.approx(m["idle"] + m["increase"], abs=0.01)
        )
    # 40 MB of weights more must show as (at least most of) 38 MiB more resident memory.
    grown = second["memory_mib"]["increase"] - first["memory_mib"]["increase"]
    assert grown > 30, (first["memory_mib"], second["memory_mib"])
    assert "ratio" not in result.table() and "p50 ×" in result.table()


def test_inputs_from_npz(tmp_path, onnx_pair):
    small, _ = onnx_pair
    good = tmp_path / "good.npz"
    np.savez(good, x=RNG.random((5, 100), dtype=np.float64))  # the batch is dynamic: 5
    r = edgekit.benchmark(small, inputs=good, runs=3, warmup=0).results[0]
    assert r["inputs"] == [{"name": "x", "dtype": "float32", "shape": [5, 100]}]
    wrong_name = tmp_path / "wrong.npz"
    np.savez(wrong_name, image=RNG.random((1, 100), dtype=np.float32), labels=np.zeros(1))
    with pytest.raises(DataError, match="no array named 'x'"):
        edgekit.benchmark(small, inputs=wrong_name, runs=1)
    wrong_shape = tmp_path / "shape.npy"
    np.save(wrong_shape, RNG.random((1, 99), dtype=np.float32))
    with pytest.raises(DataError, match=r"shape \[1, 99\], the model takes \['\?', 100\]"):
        edgekit.benchmark(small, inputs=wrong_shape, runs=1)


def test_inputs_static_batch_takes_the_first_rows(tmp_path, models):
    data = tmp_path / "four.npz"
    np.savez(data, x=RNG.random((4, 2, 6, 6), dtype=np.float32))
    r = edgekit.benchmark(models["onnx"], inputs=data, runs=2, warmup=0).results[0]
    assert r["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 2, 6, 6]}]


def test_errors(tmp_path, onnx_pair):
    small, _ = onnx_pair
    with pytest.raises(ModelNotFoundError):
        edgekit.benchmark(tmp_path / "absent.onnx")
    (tmp_path / "model.pb").write_bytes(b"x")
    with pytest.raises(UsageError, match="not an artifact of any backend"):
        edgekit.benchmark(tmp_path / "model.pb")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelFormatError, match=r"corrupt\.onnx"):
        edgekit.benchmark(tmp_path / "corrupt.onnx", runs=1)
    with pytest.raises(UsageError, match="pin"):
        edgekit.benchmark(small, pin="a-b")
    with pytest.raises(UsageError, match="runs"):
        edgekit.benchmark(small, runs=0)
    with pytest.raises(DeviceError, match="no 'GPU'"):
        edgekit.benchmark(small, device="GPU", runs=1)
    with pytest.raises(UsageError, match="unknown device kind"):
        edgekit.benchmark(small, device="telnet://board")


def test_missing_runtime_names_the_extra(tmp_path, onnx_pair):
    """A Python without onnxruntime runs the runner: its import fails and edgekit says which
    extra to install."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(MissingDependencyError, match=r"edgekit\[onnx\]"):
        edgekit.benchmark(onnx_pair[0], remote_python=str(bare / "bin" / "python"))


def test_one_interleaved_run_over_every_backend(models, tflite_models):
    """ONNX, OpenVINO IR and TFLite side by side, each through its backend's runner."""
    wanted = {"onnxruntime": models["onnx"], "openvino": models["openvino"]}
    wanted["tflite"] = tflite_models["fp32"]
    missing = set(wanted) - set(backend_names())
    if missing:
        pytest.skip(f"backends not registered yet: {sorted(missing)}")
    result = edgekit.benchmark(list(wanted.values()), runs=6, warmup=1, threads=1, rounds=3)
    assert validate(result.to_json()) == []
    by_backend = {r["backend"]: r for r in result.results}
    assert set(by_backend) == set(wanted)
    assert [r["runtime"]["name"] for r in result.results] == ["onnxruntime", "openvino", "litert"]
    ir = by_backend["openvino"]
    xml, weights = models["openvino"], models["openvino"].with_suffix(".bin")
    assert [f["name"] for f in ir["files"]] == [xml.name, weights.name]
    assert ir["size_bytes"] == xml.stat().st_size + weights.stat().st_size
    assert ir["precision"]["effective"] == "f32"
    assert by_backend["tflite"]["precision"]["effective"] == "fp32"
    assert all(r["timing_ms"]["runs"] == 6 for r in result.results)


# ---------------------------------------------------------------- CLI


def test_cli_table_and_json(onnx_pair, capsys):
    small, big = onnx_pair
    assert main(["benchmark", str(small), str(big), "--runs", "6", "--warmup", "1"]) == 0
    table = capsys.readouterr().out
    assert "small.onnx" in table and "big.onnx" in table and "interleaved" in table
    assert main(["benchmark", str(small), "--runs", "4", "--json", "--pin", "0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == 1 and doc["settings"]["pin"] == "0"
    assert doc["results"][0]["timing_ms"]["runs"] == 4


def test_cli_errors_are_one_line_with_exit_codes(tmp_path, onnx_pair, capsys):
    cases = [
        (["benchmark", str(tmp_path / "none.onnx")], 3),
        (["benchmark", str(onnx_pair[0]), "--runs", "0"], 2),
        (["benchmark", str(onnx_pair[0]), "--device", "GPU"], 8),
        (["benchmark", str(onnx_pair[0]), "--inputs", str(tmp_path / "none.npz")], 5),
    ]
    for argv, code in cases:
        try:
            got = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            got = exc.code
        err = capsys.readouterr().err
        assert got == code, (argv, err)
        assert err.startswith("edgekit: error:") and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_benchmark_help_imports_no_framework():
    code = (
        "import sys\nfrom edgekit.cli import main\n"
        "try:\n    main(['benchmark', '--help'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('tensorflow', 'torch', 'openvino', 'onnxruntime', 'onnx') "
        "if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "--inference-precision" in out.stdout


# ---------------------------------------------------------------- one inputs file, every artifact

HAS_LITERT_TORCH = importlib.util.find_spec("litert_torch") is not None


@pytest.fixture(scope="module")
def torch_artifacts(torch_cnn, digits, tmp_path_factory) -> dict[str, Path]:
    """The PyTorch digits CNN exported at FP32 to ONNX, OpenVINO IR and TFLite (the last
    channels-last, under litert-torch's signature name): one source, three artifacts."""
    if not HAS_LITERT_TORCH:
        pytest.skip("litert-torch is not installed: pip install 'edgekit[torch-tflite]'")
    d = tmp_path_factory.mktemp("torch_artifacts")
    x_train, _, x_test, _ = digits
    out = {}
    for target in ("onnxruntime", "openvino", "tflite"):
        report = edgekit.export(
            torch_cnn,
            target,
            "fp32",
            output_dir=d / target,
            calibration=feeds(x_train[:8], "input"),
            eval_data=feeds(x_test[:8], "input"),
            eval_samples=8,
            example_inputs=(np.zeros((1, 1, 32, 32), np.float32),),
            name="digits",
        )
        out[target] = report.artifact
    return out


def _torch_ref(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _litert_by_signature(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """The .tflite in a plain LiteRT interpreter, fed under its own signature key."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    return np.concatenate(
        [next(iter(runner(**{key: x[i : i + 1]}).values())) for i in range(len(x))]
    )


def test_one_source_inputs_file_feeds_onnx_ir_and_tflite(torch_artifacts, digits, tmp_path, capsys):
    """The source's input name in the source layout (NCHW) works for all three artifacts side by
    side, although the TFLite one takes NHWC under another name."""
    x = samples.to_input(digits[2][:3], layout="NCHW")  # 3 rows: each static batch takes 1
    npz = tmp_path / "in.npz"
    np.savez(npz, input=x)
    paths = [torch_artifacts[t] for t in ("onnxruntime", "openvino", "tflite")]
    result = edgekit.benchmark(paths, inputs=npz, runs=3, warmup=1, threads=1)
    assert validate(result.to_json()) == []
    assert [r["inputs"][0]["name"] for r in result.results] == ["input"] * 3
    side = json.loads(Path(f"{paths[2]}.edgekit.json").read_text())
    (entry,) = side["backend_details"]["io_map"]["inputs"]
    assert entry["signature"] != "input" and entry["perm"] == [0, 2, 3, 1]
    assert result.results[2]["inputs"] == [
        {
            "name": "input",
            "dtype": "float32",
            "shape": side["inputs"][0]["shape"],
            "signature": entry["signature"],
            "layout": "NHWC",
            "source_layout": "NCHW",
        }
    ]
    # The command line of the bug report: the .tflite alone with that file.
    assert main(["benchmark", str(paths[2]), "--inputs", str(npz), "--runs", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["inputs"][0]["name"] == "input"


def test_source_layout_inputs_reach_tflite_transposed(torch_artifacts, torch_cnn, digits, tmp_path):
    """What the runner gets from a source-layout file, run in LiteRT under the artifact's own
    name, gives what the PyTorch model gives on the original NCHW pictures."""
    path = torch_artifacts["tflite"]
    art = resolve_artifact(path)
    (entry,) = art.io_map["inputs"]
    x = samples.to_input(digits[2][:4], layout="NCHW")
    npz = tmp_path / "nchw.npz"
    np.savez(npz, input=x)
    work = tmp_path / "work"
    work.mkdir()
    with np.load(bench_inputs.prepare(npz, art.io_map, work)) as prepared:
        assert set(prepared.files) == {entry["signature"]}
        fed = prepared[entry["signature"]]
    assert fed.shape == (4, 32, 32, 1)
    got = _litert_by_signature(path, entry["signature"], fed)
    np.testing.assert_allclose(got, _torch_ref(torch_cnn, x), atol=1e-4, rtol=1e-4)
    # Arrays already in the artifact's layout, or under its own name, pass unchanged.
    nhwc = tmp_path / "nhwc.npz"
    np.savez(nhwc, input=fed)
    (work / "2").mkdir()
    with np.load(bench_inputs.prepare(nhwc, art.io_map, work / "2")) as again:
        np.testing.assert_array_equal(again[entry["signature"]], fed)
    own = tmp_path / "own.npz"
    np.savez(own, **{entry["signature"]: fed})
    r = edgekit.benchmark(path, inputs=own, runs=2, warmup=0).results[0]
    assert r["inputs"][0]["name"] == "input"


def test_tflite_without_sidecar_uses_the_map_inside_the_file(torch_artifacts, digits, tmp_path):
    """A .tflite copied on its own: the map edgekit stored in it (read host side by the
    runner module, with LiteRT's schema) equals the sidecar's and edgekit's own reader's."""
    from edgekit.backends.tflite.session import METADATA_NAME, read_io_map

    src = torch_artifacts["tflite"]
    alone = tmp_path / src.name
    shutil.copy(src, alone)
    side = json.loads(Path(f"{src}.edgekit.json").read_text())
    art = resolve_artifact(alone)
    runner = get_backend("tflite").runner_module
    assert runner.METADATA_NAME == METADATA_NAME
    assert art.io_map == side["backend_details"]["io_map"] == read_io_map(alone.read_bytes())
    npz = tmp_path / "in.npz"
    np.savez(npz, input=samples.to_input(digits[2][:1], layout="NCHW"))
    r = edgekit.benchmark(alone, inputs=npz, runs=2, warmup=0).results[0]
    assert r["inputs"][0]["name"] == "input" and r["inputs"][0]["layout"] == "NHWC"


def test_source_inputs_errors_name_the_source_input(torch_artifacts, tmp_path):
    path = torch_artifacts["tflite"]
    wrong_name = tmp_path / "name.npz"
    np.savez(wrong_name, image=np.zeros((1, 1, 32, 32), np.float32), labels=np.zeros(1))
    with pytest.raises(DataError, match="no array named 'input'"):
        edgekit.benchmark(path, inputs=wrong_name, runs=1)
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, input=np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(DataError, match=r"\[1, 1, 32, 32\] \(NCHW\) or \[1, 32, 32, 1\] \(NHWC\)"):
        edgekit.benchmark(path, inputs=wrong_shape, runs=1)


def test_tflite_runner_names_inputs_by_signature_key(tflite_models, tmp_path):
    """A file without edgekit's map (TFLiteConverter's own): the runner, like edgekit's
    sessions, names its input by the signature key, and a file keyed so feeds it."""
    from ai_edge_litert.interpreter import Interpreter

    path = tflite_models["fp32"]
    (key,) = Interpreter(model_path=str(path)).get_signature_list()["serving_default"]["inputs"]
    assert edgekit.load(path).inputs[0].name == key
    ready, _, _ = _drive(_start("tflite", path))
    assert [i["name"] for i in ready["inputs"]] == [key]
    npz = tmp_path / "keyed.npz"
    np.savez(npz, **{key: RNG.random((1, 12, 12, 1), dtype=np.float32)})
    r = edgekit.benchmark(path, inputs=npz, runs=2, warmup=0).results[0]
    assert r["inputs"] == [{"name": key, "dtype": "float32", "shape": [1, 12, 12, 1]}]
