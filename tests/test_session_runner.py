"""A backend's session and its standalone benchmark runner see the same model, and every
backend's session refuses the same bad feeds with the same error.

For each registered backend, one tiny model (ONNX where the backend takes ONNX, else Keras;
built here) is exported at fp32 and int8, then opened both ways: ``edgekit.load`` (the session)
and ``edgekit.benchmark`` (the runner in a fresh process), plus the runner module in-process
for its outputs. Inputs (names, dtypes, shapes), outputs and the effective precision must
agree: they come from one implementation in the backend's runner file.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import conv_model

import edgekit
from edgekit.backends import backend_names, get_backend
from edgekit.bench.harness import resolve_artifact
from edgekit.bench.runners._harness import make_inputs
from edgekit.errors import DataError

RNG = np.random.default_rng(7)
QUANTIZED = "int8"


def _onnx_source(folder: Path) -> tuple[Path, tuple[int, ...]]:
    path = folder / "conv.onnx"
    onnx.save(conv_model(RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)), path)
    return path, (1, 2, 6, 6)


def _keras_source(folder: Path) -> tuple[object, tuple[int, ...]]:
    import keras

    inp = keras.Input((6, 6, 2), name="x")
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    y = keras.layers.Dense(3, name="y")(keras.layers.Flatten()(y))
    return keras.Model(inp, y), (1, 6, 6, 2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """backend name -> {precision: artifact path}, exported on first use."""
    done: dict[str, dict[str, Path]] = {}

    def get(name: str) -> dict[str, Path]:
        if name not in done:
            backend = get_backend(name)
            assert QUANTIZED in backend.capabilities.precisions
            folder = tmp_path_factory.mktemp(f"session_runner_{name}")
            sources = backend.capabilities.sources
            make = _onnx_source if "onnx" in sources else _keras_source
            source, shape = make(folder)
            calib = [{"x": RNG.random(shape, dtype=np.float32)} for _ in range(16)]
            reports = edgekit.export(
                source,
                name,
                ["fp32", QUANTIZED],
                output_dir=folder / "out",
                calibration=calib,
                eval_data=calib[:4],
                eval_samples=4,
                name="tiny",
            )
            done[name] = {r.recipe.precision: r.artifact for r in reports}
        return done[name]

    return get


def _runner_model(name: str, path: Path):
    """The backend's runner, imported as a module, loading ``path`` as on a device."""
    module = get_backend(name).runner_module
    opts = Namespace(threads=None, accelerator=None, inference_precision="match")
    return module.load(module.import_runtime(), str(path), opts)


def _by_source_name(specs, entries) -> list[tuple[str, str, list]]:
    """Runner (name, dtype, dims) under the session's names: the artifact's own names mapped
    back to the source's through the export's I/O map, as the benchmark result reports them."""
    to_source = {e["signature"]: e["name"] for e in entries or []}
    return [(to_source.get(n, n), d, [1 if v is None else v for v in dims]) for n, d, dims in specs]


@pytest.mark.parametrize("precision", ["fp32", QUANTIZED])
@pytest.mark.parametrize("name", backend_names())
def test_session_and_runner_agree(exported, name, precision):
    path = exported(name)[precision]
    session = edgekit.load(path)
    io_map = resolve_artifact(path).io_map or {}

    # The runner in its own process, through edgekit.benchmark: what the result JSON reports.
    result = edgekit.benchmark(path, runs=3, warmup=1).to_json()["results"][0]
    assert [(i["name"], i["dtype"], i["shape"]) for i in result["inputs"]] == [
        (s.name, s.dtype, list(s.shape)) for s in session.inputs
    ]
    assert result["precision"]["effective"] == session.info["effective_precision"]

    # The same runner in-process: its outputs for the same feeds are the session's.
    model = _runner_model(name, path)
    assert _by_source_name(model.inputs, io_map.get("inputs")) == [
        (s.name, s.dtype, list(s.shape)) for s in session.inputs
    ]
    assert _by_source_name(model.outputs, io_map.get("outputs")) == [
        (s.name, s.dtype, list(s.shape)) for s in session.outputs
    ]
    assert model.info["effective_precision"] == session.info["effective_precision"]
    feeds = make_inputs(model.inputs, "random", 0)
    model.set_inputs(feeds)
    model.run()
    names = [n for n, _, _ in _by_source_name(model.inputs, io_map.get("inputs"))]
    got = session.run(dict(zip(names, feeds.values(), strict=True)))
    for want, have in zip(model.fetch(), got, strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", backend_names())
def test_quantized_artifact_reports_another_effective_precision(exported, name):
    """Where a runtime reports what it computes in, int8 is not what fp32 runs."""
    fp32, quantized = (edgekit.load(exported(name)[p]) for p in ("fp32", QUANTIZED))
    effective = fp32.info["effective_precision"]
    assert effective is None or quantized.info["effective_precision"] != effective


@pytest.mark.parametrize("name", backend_names())
def test_bad_feeds_are_data_errors_on_every_backend(exported, name):
    session = edgekit.load(exported(name)["fp32"])
    (spec,) = session.inputs
    assert spec.name == "x"  # the source's name, on every backend
    shape = tuple(int(d) for d in spec.shape)
    good = RNG.random(shape, dtype=np.float32)
    want = session.run({"x": good})

    with pytest.raises(DataError, match=r"input 'x' missing from the feeds"):
        session.run({})
    with pytest.raises(DataError, match=r"feed 'extra' is not an input .*'x'"):
        session.run({"x": good, "extra": good})
    wrong = (*shape[:-1], shape[-1] + 1)
    with pytest.raises(
        DataError, match=rf"input 'x' has shape \[{', '.join(map(str, wrong))}\]; the model expects"
    ):
        session.run({"x": np.zeros(wrong, np.float32)})
    with pytest.raises(DataError, match=r"input 'x' is complex64 but the model expects float32"):
        session.run({"x": good.astype(np.complex64)})
    with pytest.raises(DataError, match=r"input 'x' is <U1 but the model expects float32"):
        session.run({"x": np.full(shape, "a")})

    # What converts without losing values runs: float64 and lists of floats.
    np.testing.assert_allclose(session.run({"x": good.astype(np.float64)})[0], want[0])
    np.testing.assert_allclose(session.run({"x": good.tolist()})[0], want[0])


def test_integer_inputs_are_not_fed_truncated_or_wrapped_values():
    """The shared check on inputs none of the tiny models has: integer ones."""
    from edgekit.backends.feeds import check_feeds
    from edgekit.model import TensorSpec

    spec = TensorSpec("ids", "int32", (1, 3))
    with pytest.raises(DataError, match=r"input 'ids' is float32 but the model expects int32"):
        check_feeds({"ids": np.ones((1, 3), np.float32)}, [spec])
    with pytest.raises(DataError, match=r"values 0..300 that do not fit the model's int8"):
        check_feeds({"ids": np.array([[0, 1, 300]])}, [TensorSpec("ids", "int8", (1, 3))])
    (ids,) = check_feeds({"ids": np.array([[1, 2, 3]], np.int64)}, [spec])
    assert ids.dtype == np.int32
