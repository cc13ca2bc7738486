"""`edgekit --help` must not import the heavy frameworks, and must start quickly."""

import subprocess
import sys

HEAVY = ["tensorflow", "torch", "openvino", "onnxruntime", "keras", "onnx"]


def test_help_imports_no_framework():
    code = (
        "import sys\n"
        "from edgekit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "export" in out.stdout and "inspect" in out.stdout


def test_export_help_imports_no_framework():
    code = (
        "import sys\n"
        "from edgekit.cli import main\n"
        "try:\n    main(['export', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "--calibration-method" in out.stdout


def test_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "edgekit", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("edgekit ")
