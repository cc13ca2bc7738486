"""Check a ``.tflite`` file in a child process before LiteRT loads it in ours.

LiteRT's C++ runtime can abort or segfault on a malformed model (for example subgraphs that
call each other forever) instead of raising, which would kill the user's process — or the
whole CLI — with no message. The child loads the model, allocates tensors and runs it once on
zeros; a non-zero exit or a signal becomes a one-line edgekit error. Files that passed are
remembered by content hash for the life of the process, so the check runs once per model.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from edgekit.errors import ConversionError, EdgekitError, ModelFormatError

TIMEOUT_S = 600
_PASSED: set[str] = set()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate(path: Path, fresh: bool = False) -> None:
    """Raise unless ``path`` loads, allocates and runs once in a child process.

    ``fresh`` marks a file edgekit has just written: a failure is then a ConversionError (the
    converter produced it), otherwise a ModelFormatError (the user's file is bad).
    """
    key = _digest(path)
    if key in _PASSED:
        return
    error: type[EdgekitError] = ConversionError if fresh else ModelFormatError
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise error(
            f"{path.name}: LiteRT did not finish loading and running the model within "
            f"{TIMEOUT_S} s; the file is likely malformed"
        ) from None
    if proc.returncode == 0:
        _PASSED.add(key)
        return
    what = "the converter wrote a model LiteRT cannot run" if fresh else "corrupt or malformed"
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        raise error(
            f"{path.name}: LiteRT crashed ({sig}) loading and running the model: {what}; "
            + ("please report it with the source model" if fresh else "re-export it")
        )
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("edgekit-check:")]
    reason = lines[-1].removeprefix("edgekit-check:").strip() if lines else "unknown error"
    raise error(f"{path.name}: LiteRT cannot load and run the model ({what}): {reason}")


# The child runs this text with ``python -c``: it needs only numpy and ai_edge_litert, not
# edgekit, so it works however edgekit itself was made importable.
_CHILD = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
try:
    interp = Interpreter(model_path=sys.argv[1], num_threads=1)
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    interp.invoke()
except Exception as exc:
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    print("edgekit-check: " + text, file=sys.stderr)
    raise SystemExit(1)
"""
