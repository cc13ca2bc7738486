"""Hostile and careless inputs, generated, through the real CLI: never exit 1, never a traceback.

Exit 1 means "internal error, report it": a user mistake or a hostile file must get its
documented class instead (2 usage, 3 missing, 4 format, 5 data, 7 backend, 8 device) and one
``edgekit: error:`` line. The cases are generated: random bytes and truncations of real model
files in every source format, byte flips, extreme dimensions, wrong-typed target TOML values,
malformed sidecars, out-of-range numeric flags. Each runs ``edgekit.cli.main`` in this process
(capturing file descriptors 1 and 2, so a runtime's own C++ log lines count as noise too).

Named security cases (files outside the artifact folder, FIFOs, zip bombs) follow at the end.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import conv_model

from edgekit.cli import main
from edgekit.errors import EXIT_CODES

RNG = np.random.default_rng(2026)
WEIGHT = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)


def _onnx_bytes(shape: tuple[int | str, ...] = (1, 2, 6, 6)) -> bytes:
    return conv_model(WEIGHT, shape).SerializeToString()


@pytest.fixture(scope="module")
def pt2_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU())
    path = tmp_path_factory.mktemp("pt2") / "m.pt2"
    torch.export.save(torch.export.export(module, (torch.zeros(1, 2, 6, 6),)), str(path))
    return path.read_bytes()


@pytest.fixture(scope="module")
def keras_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3)])
    path = tmp_path_factory.mktemp("keras") / "m.keras"
    model.save(str(path))
    return path.read_bytes()


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, bytes | str]
    argv: tuple[str, ...]


def _truncations(data: bytes, suffix: str, n: int) -> list[Case]:
    cuts = sorted({int(len(data) * f) for f in np.linspace(0.02, 0.98, n)})
    return [
        Case(
            f"truncated-{suffix}-{c}",
            {f"m{suffix}": data[:c]},
            ("export", f"m{suffix}", "-o", "out"),
        )
        for c in cuts
    ]


def _random_files() -> list[Case]:
    cases = []
    for suffix in (".onnx", ".tflite", ".pt2", ".keras", ".h5"):
        for size in (0, 1, 16, 4096):
            data = RNG.bytes(size)
            if suffix == ".tflite" and size >= 8:
                data = data[:4] + b"TFL3" + data[8:]  # past the identifier check, into the parser
            for command in ("export", "inspect"):
                argv = (command, f"m{suffix}", *(("-o", "out") if command == "export" else ()))
                cases.append(Case(f"random-{suffix}-{size}-{command}", {f"m{suffix}": data}, argv))
    return cases


def _flips() -> list[Case]:
    data = bytearray(_onnx_bytes())
    cases = []
    for i in range(12):
        flipped = bytearray(data)
        for pos in RNG.integers(0, len(data), size=8):
            flipped[pos] ^= 0xFF
        cases.append(
            Case(f"flipped-onnx-{i}", {"m.onnx": bytes(flipped)}, ("export", "m.onnx", "-o", "out"))
        )
    return cases


_SHAPES = (
    "x=0x2x6x6",
    "x=-1x2x6x6",
    "x=1x2x2147483648x6",
    "x=1x2x99999999999999999999x9",
    "x=1x2x100000x100000",
    "x=1x",
    "x=",
    "=1x2",
    "x=1.5x2x6x6",
    "x=1x2x6x6x1",
)


def _dims() -> list[Case]:
    dynamic = _onnx_bytes(("N", 2, "H", "W"))
    cases = [
        Case(
            f"input-shape-{i}",
            {"m.onnx": dynamic},
            ("export", "m.onnx", "-o", "out", "--input-shape", s),
        )
        for i, s in enumerate(_SHAPES)
    ]
    cases.append(
        Case(
            "declared-huge",
            {"m.onnx": _onnx_bytes((1, 2, 100000, 100000))},
            ("export", "m.onnx", "-o", "out"),
        )
    )
    cases.append(
        Case(
            "declared-huge-int8",
            {"m.onnx": _onnx_bytes((1, 2, 100000, 100000))},
            ("export", "m.onnx", "-o", "out", "-p", "int8", "--calibration", "random"),
        )
    )
    return cases


_TOML_VALUES = {
    "name": ["5", "[1]"],
    "backend": ["5", '"nosuch"', "{a = 1}"],
    "description": ["[1, 2]"],
    "device": ["3", "true"],
    "precision": ["5", '"int8"', "{default = 5}", '{default = "int3"}'],
    "recipe": [
        "3",
        '"x"',
        '{per_channel = "no"}',
        '{calibration_samples = "many"}',
        "{calibration_samples = -5}",
        "{seed = -1}",
        "{percentile = true}",
        "{keep_float = 5}",
        "{nosuch = 1}",
        "{io_dtype = 8}",
    ],
    "benchmark": ["1"],
}


def _tomls() -> list[Case]:
    cases = []
    for key, values in _TOML_VALUES.items():
        for i, value in enumerate(values):
            text = (
                f"{key} = {value}\n"
                if key == "backend"
                else f'backend = "onnxruntime"\n{key} = {value}\n'
            )
            cases.append(
                Case(
                    f"toml-{key}-{i}",
                    {"m.onnx": _onnx_bytes(), "t.toml": text},
                    ("export", "m.onnx", "-o", "out", "-t", "t.toml"),
                )
            )
    raw = {
        "not-utf8": b'backend = "onnxruntime"\nname = "\xff\xfe"\n',
        "binary": RNG.bytes(200),
        "unclosed": b'backend = "onnx',
        "huge": b"# " + b"x" * (2 << 20),
    }
    for what, data in raw.items():
        cases.append(
            Case(
                f"toml-{what}",
                {"m.onnx": _onnx_bytes(), "t.toml": data},
                ("export", "m.onnx", "-o", "out", "-t", "t.toml"),
            )
        )
    return cases


_SIDECARS = [
    "[1, 2]",
    '"text"',
    "5",
    "null",
    '{"artifact": 5}',
    '{"artifact": {"files": 5}}',
    '{"artifact": {"files": "abc"}}',
    '{"artifact": {"files": ["../m.onnx", "a.onnx"]}}',
    '{"artifact": {"files": ["/etc/passwd", "a.onnx"]}}',
    '{"artifact": {"files": ["", "a.onnx"]}}',
    '{"artifact": {"files": [5, "a.onnx"]}}',
    '{"artifact": {"files": ["sub/a.onnx"]}}',
    '{"recipe": []}',
    '{"recipe": {"precision": 8}}',
    '{"backend_details": {"io_map": 3}}',
    "{not json",
    '{"artifact": {"files": ["b.onnx"]}}',
]


def _sidecars() -> list[Case]:
    cases = []
    for i, text in enumerate(_SIDECARS):
        files: dict[str, bytes | str] = {
            "a.onnx": _onnx_bytes(),
            "m.onnx": b"",
            "a.onnx.edgekit.json": text,
        }
        cases.append(
            Case(f"sidecar-{i}", files, ("benchmark", "a.onnx", "--runs", "2", "--warmup", "0"))
        )
    cases.append(
        Case(
            "sidecar-not-utf8",
            {"a.onnx": _onnx_bytes(), "a.onnx.edgekit.json": b"\xff\xfe{}"},
            ("benchmark", "a.onnx", "--runs", "2"),
        )
    )
    return cases


_FLAGS = [
    ("export", "--seed", "-1"),
    ("export", "--seed", str(2**40)),
    ("export", "--eval-samples", "-5"),
    ("export", "--calibration-samples", str(10**12)),
    ("export", "--percentile", "nan"),
    ("export", "--percentile", "inf"),
    ("export", "--scale", "abc"),
    ("export", "--mean", "1,,2"),
    ("export", "--percentile", "99"),
    ("export", "--keep-float", "nosuch"),
    ("benchmark", "--runs", "0"),
    ("benchmark", "--pin", "0-200000000"),
    ("benchmark", "--pin", "a"),
    ("benchmark", "--pin", "5-1"),
    ("benchmark", "--threads", "0"),
    ("benchmark", "--warmup", "-1"),
    ("benchmark", "--duration", "0"),
    ("benchmark", "--duration", "nan"),
    ("benchmark", "--rounds", "0"),
    ("benchmark", "--device", "ssh://[::1"),
    ("benchmark", "--device", "ssh://-V@x"),
    ("benchmark", "--device", "adb://-s"),
    ("benchmark", "--device", "nosuch://x"),
    ("benchmark", "--inputs", "nothere.npz"),
]


def _flags() -> list[Case]:
    cases = []
    for i, (command, *flag) in enumerate(_FLAGS):
        if command == "export":
            argv = ("export", "m.onnx", "-o", "out", "-p", "int8", "--calibration", "random", *flag)
        else:
            argv = ("benchmark", "m.onnx", "--runs", "2", "--warmup", "0", *flag)
        cases.append(Case(f"flag-{i}-{'-'.join(flag)[:30]}", {"m.onnx": _onnx_bytes()}, argv))
    return cases


CASES = [*_random_files(), *_flips(), *_dims(), *_tomls(), *_sidecars(), *_flags()]


def _write(tmp: Path, files: dict[str, bytes | str]) -> None:
    for name, data in files.items():
        path = tmp / name
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)


def run_main(
    tmp: Path, argv: tuple[str, ...], capfd: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    finally:
        os.chdir(cwd)
    out, err = capfd.readouterr()
    return code, out, err


def check_failure(code: int, out: str, err: str, tmp: Path) -> list[str]:
    problems = []
    if code == 1 or code not in EXIT_CODES:
        problems.append(f"exit code {code}")
    if "Traceback" in out + err:
        problems.append("a traceback was printed")
    if code != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if len(lines) != 1 or not lines[0].startswith("edgekit: error: "):
            problems.append(f"stderr is not one 'edgekit: error:' line: {err[:600]!r}")
        out_dir = tmp / "out"
        if out_dir.exists():
            problems.append(f"a failed export left {sorted(os.listdir(out_dir))} in out/")
    return problems


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_PROGRESS", "0")
    monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_generated_hostile_input_never_exits_1(case: Case, tmp_path: Path, capfd) -> None:
    _write(tmp_path, case.files)
    code, out, err = run_main(tmp_path, case.argv, capfd)
    problems = check_failure(code, out, err, tmp_path)
    assert not problems, f"{case.argv}: " + "; ".join(problems)


@pytest.mark.parametrize("kind", ["pt2", "keras"])
def test_truncated_framework_archives(kind: str, request, tmp_path: Path, capfd) -> None:
    data = request.getfixturevalue(f"{kind}_bytes")
    for case in _truncations(data, f".{kind}", 6):
        case_dir = tmp_path / case.id
        case_dir.mkdir()
        _write(case_dir, case.files)
        code, out, err = run_main(case_dir, case.argv, capfd)
        problems = check_failure(code, out, err, case_dir)
        assert code != 0, f"{case.id} exported"
        assert not problems, f"{case.id}: " + "; ".join(problems)


def test_hostile_case_count() -> None:
    """The closing note quotes this count; the generated set must not shrink by accident."""
    assert len(CASES) >= 120, len(CASES)


# --- named security cases --------------------------------------------------------------------


def _export_onnx(tmp: Path) -> Path:
    onnx.save(conv_model(WEIGHT), str(tmp / "m.onnx"))
    code = main(["export", str(tmp / "m.onnx"), "-o", str(tmp / "art")])
    assert code == 0
    return tmp / "art" / "m_fp32.onnx"


@pytest.mark.parametrize(
    "entry",
    ["../secret.txt", "/etc/passwd", "link-out", "..", "sub/../../secret.txt"],
)
def test_sidecar_file_list_cannot_leave_the_artifact_folder(
    entry: str, tmp_path: Path, capfd
) -> None:
    """A benchmark copies an artifact's listed files to the device and counts their size; a
    sidecar naming anything outside the artifact's folder is refused before any file is read."""
    import edgekit
    from edgekit.errors import ModelFormatError

    art = _export_onnx(tmp_path)
    (tmp_path / "secret.txt").write_text("key")
    (art.parent / "link-out").symlink_to(tmp_path / "secret.txt")
    side = art.with_name(art.name + ".edgekit.json")
    meta = json.loads(side.read_text())
    meta["artifact"]["files"] = [art.name, entry]
    side.unlink()  # the committed sidecar is a symlink into the store: replace it by a file
    side.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="sidecar"):
        edgekit.benchmark(art, runs=2, warmup=0)
    capfd.readouterr()
    code, _out, err = run_main(tmp_path, ("benchmark", str(art), "--runs", "2"), capfd)
    assert code == 4 and ("leads outside" in err or "plain file name" in err), err


def test_fifo_model_is_refused_without_hanging(tmp_path: Path, capfd) -> None:
    os.mkfifo(tmp_path / "m.onnx")
    code, _out, err = run_main(tmp_path, ("inspect", "m.onnx"), capfd)
    assert code == 4 and "not a regular file" in err


def test_character_device_linked_as_model_is_refused(tmp_path: Path, capfd) -> None:
    (tmp_path / "m.tflite").symlink_to("/dev/urandom")
    for argv in (("inspect", "m.tflite"), ("export", "m.tflite", "-t", "openvino", "-o", "out")):
        code, _out, err = run_main(tmp_path, argv, capfd)
        assert code == 4 and "not a regular file" in err, err


def test_keras_zip_bomb_is_refused_before_keras_reads_it(tmp_path: Path, capfd) -> None:
    """A 100 MiB config.json that deflates to ~100 KiB: refused from the zip directory alone."""
    pytest.importorskip("keras")
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        with zf.open("config.json", "w") as fh:
            chunk = b" " * (1 << 20)
            for _ in range(100):
                fh.write(chunk)
    assert path.stat().st_size < 2 << 20
    code, _out, err = run_main(tmp_path, ("inspect", "bomb.keras"), capfd)
    assert code == 4 and "config.json" in err and "MiB" in err, err


def test_zip_member_sizes_come_from_the_directory(tmp_path: Path) -> None:
    """The bound holds because zipfile never inflates past a member's declared size: a member
    that lies about its size fails to read instead of growing."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", b" " * 10000)
    data = bytearray(buf.getvalue())
    # Patch the central directory's uncompressed size (offset 24 in the entry) to 10 bytes.
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    path = tmp_path / "lie.zip"
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as zf, pytest.raises(zipfile.BadZipFile):
        zf.read("config.json")
