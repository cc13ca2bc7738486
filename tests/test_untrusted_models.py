"""No code runs from a model file: malicious ``.pt``, ``.keras`` and ``.h5`` files built here.

Each case first proves, in a fresh process, that the file really is malicious (the framework's
own unsafe loader runs its payload, which writes a marker file), then that edgekit, in another
fresh process, refuses it with a one-line error and that the marker never appears. ``.pt2``
archives have their own suite (tests/test_pt2_safety.py), SavedModels theirs
(tests/test_savedmodel_safety.py).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEKIT_PROGRESS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("EDGEKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _edgekit(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return _run(f"from edgekit.cli import main; raise SystemExit(main({list(argv)!r}))", cwd)


def _assert_refused(result: subprocess.CompletedProcess[str], marker: Path, says: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 4, result.stderr
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), result.stderr
    assert says in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not marker.exists(), "the payload ran"


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the classic pickle code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_torch_file_is_refused_unread(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    marker = tmp_path / "PWNED"
    (tmp_path / "model.pt").write_bytes(pickle.dumps({"weights": _Payload(str(marker))}))
    control = _run(
        "import torch; torch.load('model.pt', weights_only=False)",
        tmp_path,
    )
    assert marker.exists(), f"control: the payload did not run: {control.stderr[-300:]}"
    marker.unlink()
    for command in ("inspect", "export"):
        result = _edgekit(tmp_path, command, "model.pt")
        _assert_refused(result, marker, "pickled files can run arbitrary code")


_LAMBDA_MODEL = """
    import keras, os
    # A lambda (unlike a named function) is saved as its bytecode, which an unsafe load runs
    # when it rebuilds the layer: here at build time too, so the marker is removed after.
    payload = lambda x: (open({marker!r}, "w").close(), x)[1]  # noqa: E731
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Lambda(payload)(keras.layers.Dense(2)(inp)))
    model.save({path!r})
    os.remove({marker!r})
"""


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_lambda_bytecode_never_runs(suffix: str, tmp_path: Path) -> None:
    pytest.importorskip("keras")
    marker = tmp_path / "PWNED"
    path = tmp_path / f"model{suffix}"
    made = _run(_LAMBDA_MODEL.format(marker=str(marker), path=str(path)), tmp_path)
    assert made.returncode == 0 and path.exists() and not marker.exists(), made.stderr[-500:]
    control = _run(
        f"import keras; keras.saving.load_model({str(path)!r}, safe_mode=False)", tmp_path
    )
    assert marker.exists(), f"control: the payload did not run: {control.stderr[-500:]}"
    marker.unlink()
    for command in ("inspect", "export"):
        result = _edgekit(tmp_path, command, path.name)
        _assert_refused(result, marker, "Lambda layer")
