"""`edgekit --help` must not import the heavy frameworks, and must start quickly."""

import subprocess
import sys

import pytest

HEAVY = ["tensorflow", "torch", "openvino", "onnxruntime", "keras", "onnx"]


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--help"], "inspect"),
        (["export", "--help"], "--calibration-method"),
        (["benchmark", "--help"], "--warmup"),
    ],
)
def test_help_imports_no_framework(argv, shown):
    code = (
        "import sys\n"
        "from edgekit.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert shown in out.stdout


def test_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "edgekit", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("edgekit ")
