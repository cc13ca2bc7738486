"""Load a ``torch.export`` ``.pt2`` archive without running code hidden in it.

A crafted archive makes a plain ``torch.export.load`` (torch 2.13) run code in many ways. Each
check refuses the file, naming the reason, before torch reads it:

* Entries: only what ``torch.export.save`` writes for one program (``models/model.json``, the
  weights/constants configs, raw tensor files ``weight_N``/``tensor_N``, sample inputs,
  ``extra/*``), listed alike by :mod:`zipfile` and torch's own reader. This refuses AOTInductor
  libraries (``data/aotinductor/``, dlopen()ed by ``_package._load_aoti``), legacy
  ``data/{weights,constants}/model.pt`` pickles, ``custom_obj_``/``opaque_obj_`` constants
  (``torch._C._pickle_load_obj``, ``pickle.loads``) and the pre-2.8 flat layout, which
  ``torch/export/__init__.py:load`` falls back to and whose ``serialized_*.pt`` it unpickles.
* Weights/constants configs: ``use_pickle`` means ``torch.load(weights_only=False)``.
* Sample inputs must load with ``torch.load(weights_only=True)`` (else ``serde/serialize.py``
  retries unrestricted) and be ``(args, kwargs)`` of plain tensors and scalars.
* ``models/model.json`` strings that reach ``eval``/``exec``: each ``expr_str`` goes to
  ``sympy.sympify`` (an ``eval``), each ``guards_code`` entry into source ``ep.module()`` execs
  (``export/_unlift.py``): both must pass an AST allowlist. Names of nodes and inputs,
  ``forward_arg_names`` and ``in_spec``'s kwarg names are pasted into the ``forward`` FX
  generates (``fx/graph.py``), parameter/buffer/constant names into ``getattr(self, "<name>")``
  there: (dotted) identifiers only. The ``ep.module()`` paths count because edgekit calls it,
  and the module, right after loading.

While ``torch.export.load`` then runs, ``torch.load`` is forced to ``weights_only=True`` and the
pickle, TorchScript-object and AOTI loaders refuse: a second line should a check miss a path.
Node targets are resolved with ``getattr`` from torch, but torch's verifier
(``ExportedProgram.validate``) admits only operators, before any graph code can run.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import stat
import threading
import types
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.export.pt2_archive import PT2ArchiveReader, _package

from edgekit.errors import ModelFormatError, first_line
from edgekit.intake.archive import check_zip

_ADVICE = (
    "edgekit loads .pt2 files without pickles or generated code: re-export it with "
    "torch.export.save from a plain nn.Module"
)
_IDENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)?\Z")  # "" is harmless: FX names the value
_FQN = re.compile(r"([A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*(@[0-9]+)?)?\Z")  # "layer1.0.conv", "a@1"
_SAMPLE = "data/sample_inputs/model.pt"
_CONFIGS = {f"data/{d}/model_{d}_config.json" for d in ("weights", "constants")}
_REQUIRED = {"archive_format", "archive_version", "models/model.json", _SAMPLE, *_CONFIGS}
_OPTIONAL = re.compile(
    r"(byteorder|\.data/version|\.data/serialization_id|extra/[\w.\-/]+"
    r"|data/weights/weight_[0-9]+|data/constants/tensor_[0-9]+)\Z"
)
_IDENT_KEYS = {"name", "as_name", "user_input_name", "forward_arg_names"}
_IDENT_TABLES = {"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values"}
_FQN_KEYS = {"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn"}


class _Unsafe(Exception):
    """Why the archive is refused. Not a RuntimeError: torch.export.load catches those from its
    reader and retries with the legacy one, which would hide the reason."""


def _check(ok: Any, reason: str) -> None:
    if not ok:
        raise _Unsafe(reason)


def load_pt2(path: Path) -> ExportedProgram:
    """``torch.export.load(path)`` after the checks above; ModelFormatError on any refusal."""
    data = _read(path)
    try:
        _check_archive(data)
        with _no_unsafe_loaders():
            ep = torch.export.load(io.BytesIO(data))
        _check(isinstance(ep, ExportedProgram), "torch did not load an exported program")
    except _Unsafe as exc:
        raise ModelFormatError(f"{path.name}: {exc}; {_ADVICE}") from exc
    except Exception as exc:
        raise ModelFormatError(
            f"{path.name} is not a loadable torch.export program (corrupt, or saved by another "
            "torch version?): save it with torch.export.save(torch.export.export(model, args), "
            "'model.pt2')"
        ) from exc
    return ep


def _read(path: Path) -> bytes:
    """The file's bytes, read once so that the checks and torch see the same archive."""
    try:
        before = path.stat()
        if not stat.S_ISREG(before.st_mode):  # a FIFO or a device would never end
            raise ModelFormatError(f"{path.name} is not a regular file; pass a .pt2 file")
        check_zip(path)  # bounds what unpacking can cost, before anything inflates a member
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            after = os.fstat(fh.fileno())
            data = fh.read()
    except OSError as exc:
        raise ModelFormatError(f"{path.name} cannot be read: {exc.strerror}") from exc
    same = (before.st_dev, before.st_ino, before.st_mtime_ns, before.st_size)
    if same != (after.st_dev, after.st_ino, after.st_mtime_ns, len(data)):
        raise ModelFormatError(f"{path.name} changed while it was being read; try again")
    return data


def _check_archive(data: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # what torch's legacy fallback would read
        names = zf.namelist()
    root = names[0].split("/", 1)[0] if names else ""
    layout = all(n.startswith(f"{root}/") for n in names)
    _check(layout, "its entries are not in one folder (the pre-2.8 torch.export.save layout)")
    files = {n[len(root) + 1 :] for n in names}
    try:
        with PT2ArchiveReader(io.BytesIO(data)) as reader:  # what torch's reader reads
            same = set(reader.get_file_names()) == files and len(files) == len(names)
            _check(same, "zipfile and torch's reader see different entries")
            for f in sorted(files - _REQUIRED):
                aoti = f.startswith("data/aotinductor/")
                _check(not aoti, f"it holds AOTInductor native code ({f}), which loading runs")
                _check(_OPTIONAL.match(f), f"unexpected entry {f!r} (not a plain exported program)")
            _check(files >= _REQUIRED, f"entries {sorted(_REQUIRED - files)} are missing")
            _check(reader.read_string("archive_format") == "pt2", "archive_format is not 'pt2'")
            for kind, folder in (("weight", "data/weights/"), ("constant", "data/constants/")):
                config = _json(reader.read_string(f"{folder}model_{kind}s_config.json"))
                stored = {f[len(folder) :] for f in files if f.startswith(folder)}
                _check_payloads(config, kind, stored)
            _check_model_json(_json(reader.read_string("models/model.json")))
            sample = reader.read_bytes(_SAMPLE)
    except RuntimeError as exc:
        raise _Unsafe(f"torch cannot read it as a .pt2 archive ({first_line(exc, 80)})") from exc
    if sample:
        try:
            example = torch.load(io.BytesIO(sample), weights_only=True)
        except Exception as exc:
            raise _Unsafe("its example inputs are a pickle of more than tensors") from exc
        args, kwargs = example if isinstance(example, tuple) and len(example) == 2 else (0, 0)
        plain = isinstance(args, tuple | list) and isinstance(kwargs, dict) and _plain(example)
        _check(plain, "its example inputs are not (args, kwargs) of tensors")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Unsafe("a JSON entry does not parse") from exc


def _plain(x: Any) -> bool:
    if isinstance(x, tuple | list):
        return all(_plain(v) for v in x)
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    return type(x) in (torch.Tensor, torch.nn.Parameter, int, float, bool, str, type(None))


def _check_payloads(config: Any, kind: str, files: set[str]) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    _check(isinstance(entries, dict), f"its {kind}s config is malformed")
    for fqn, meta in entries.items():
        _check(_FQN.match(fqn), _named(f"{kind} name", fqn))
        _check(isinstance(meta, dict), f"{kind} {fqn!r} is malformed")
        _check(meta.get("use_pickle") is False, f"{kind} {fqn!r} is stored as a pickle")
        # The folder holds only weight_N / tensor_N files: the raw tensor bytes torch maps.
        _check(meta.get("path_name") in files, f"{kind} {fqn!r} is not stored as a tensor")
        _check(isinstance(meta.get("tensor_meta"), dict), f"{kind} {fqn!r} has no tensor metadata")


def _check_model_json(model: Any) -> None:
    stack = [model]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        for key, value in node.items() if isinstance(node, dict) else ():
            stack.append(value)
            if key == "expr_str":
                _check_expr(value, "a symbolic shape", _sympy_leaf)
            elif key == "guards_code":
                for guard in value if isinstance(value, list) else [None]:
                    _check_expr(guard, "a shape guard", _guard_leaf, forbid='#"\\')
            elif key in _IDENT_KEYS or key in _IDENT_TABLES:
                names = [value] if isinstance(value, str) else value  # a list or a table's keys
                for name in names if isinstance(names, list | dict) else ():
                    _check(isinstance(name, str) and _IDENT.match(name), _named(key, name))
            elif key in _FQN_KEYS:
                _check(isinstance(value, str) and _FQN.match(value), _named(key, value))
            elif key == "in_spec":
                _check_in_spec(value)


def _named(key: str, value: Any) -> str:
    return f"its {key} {value!r:.100} is not a plain identifier"


def _check_in_spec(text: Any) -> None:
    # The kwarg names of an (args, kwargs) spec are pasted into forward's source (fx/graph.py).
    try:
        spec = torch.utils._pytree.treespec_loads(text)
    except Exception as exc:
        raise _Unsafe("its in_spec does not parse") from exc
    if spec.type is tuple and spec.num_children == 2 and spec.child(1).type is dict:
        for name in spec.child(1).context:
            _check(isinstance(name, str) and _IDENT.match(name), _named("kwarg name", name))


# --- expression allowlists --------------------------------------------------------------------

_Leaf = Callable[[ast.AST, Callable[[ast.AST], bool]], bool]
_OPS = (ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.IfExp, ast.Tuple)
_OPERATORS = (ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.expr_context)


def _check_expr(text: Any, what: str, leaf: _Leaf, forbid: str = "") -> None:
    """Refuse ``text`` unless it is operators over numbers and the leaves (names, calls) that
    ``leaf`` accepts: operators on numbers, sympy values and tensor sizes run no other code."""
    plain = isinstance(text, str) and text.isascii() and text.isprintable() and len(text) < 10_000
    why = f"{str(text)!r:.100} is not {what}"
    _check(plain and not any(c in text for c in forbid), why)
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _Unsafe(why) from exc

    def ok(n: ast.AST) -> bool:
        if isinstance(n, ast.Constant):
            return type(n.value) in (int, float, bool, type(None))
        if isinstance(n, _OPS):
            return all(isinstance(c, _OPERATORS) or ok(c) for c in ast.iter_child_nodes(n))
        return leaf(n, ok)

    _check(ok(tree), why)


_SYMPY_CALL = re.compile(
    r"(Symbol|Dummy|Integer|Rational|Float|Add|Mul|Pow|Max|Min|Mod|Abs|floor|ceiling|Eq|Ne|Lt|Le"
    r"|Gt|Ge|StrictLessThan|StrictGreaterThan|LessThan|GreaterThan|Equality|Unequality|And|Or"
    r"|Not|Piecewise|ExprCondPair|Tuple|BooleanTrue|BooleanFalse"
    # torch.utils._sympy.functions, which the deserializer puts in sympify's namespace
    r"|FloorDiv|ModularIndexing|Where|PythonMod|CleanDiv|CeilToInt|FloorToInt|CeilDiv|LShift"
    r"|RShift|PowByNatural|FloatPow|FloatTrueDiv|IntTrueDiv|IsNonOverlappingAndDenseIndicator"
    r"|TruncToFloat|TruncToInt|RoundToInt|RoundDecimal|ToFloat|Identity)\Z"
)
_SYMPY_NAME = re.compile(r"[a-z]+[0-9]*\Z")  # oo, zoo, nan, true, s0
_FLOAT_TEXT = re.compile(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?\Z", re.IGNORECASE)


def _sympy_leaf(n: ast.AST, ok: Callable[[ast.AST], bool]) -> bool:
    # Genuine: "Mul(Integer(2), Symbol('s39', positive=True, integer=True))". A string argument
    # to most sympy functions is sympified (eval'd) again: only Symbol names and Float digits.
    if isinstance(n, ast.Name):
        return bool(_SYMPY_NAME.match(n.id))
    if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
        return False
    func, args, keywords = n.func.id, n.args, n.keywords
    text = args[0].value if args and isinstance(args[0], ast.Constant) else None
    if func in ("Symbol", "Dummy"):
        named = isinstance(text, str) and bool(_IDENT.match(text)) and len(args) == 1
        return named and all(k.arg and ok(k.value) for k in keywords)
    if func == "Float" and isinstance(text, str):
        digits = bool(_FLOAT_TEXT.match(text)) and all(ok(a) for a in args[1:])
        return digits and all(k.arg == "precision" and ok(k.value) for k in keywords)
    return bool(_SYMPY_CALL.match(func)) and not keywords and all(ok(a) for a in args)


# Genuine: "(L['x'].size()[2] // 2) <= L['x'].size()[2]", pasted into
# `torch._assert(<guard>, "Guard failed: <guard>")`, hence no '"', '\' or '#' either.
_GUARD_CALL = re.compile(
    r"(max|min|abs|int|float|round|bool|IsNonOverlappingAndDenseIndicator"
    r"|cast_symbool_to_symint_guardless|math\.(floor|ceil|trunc|sqrt|isnan|isinf|log|exp|pow|fabs)"
    r"|torch\.sym_(float|int|ite|max|min|sqrt|not))\Z"
)
_GUARD_NAME = re.compile(r"(L|inf|math\.(inf|pi|e|nan))\Z")
_TENSOR_METHODS = {"size", "stride", "storage_offset", "dim", "numel"}


def _dotted(n: ast.AST) -> str:
    return ast.unparse(n) if isinstance(n, ast.Name | ast.Attribute) else ""


def _guard_leaf(n: ast.AST, ok: Callable[[ast.AST], bool]) -> bool:
    """Allowed functions of plain values, and ``L['x']``, ``L['x'].size()[1]`` and the like."""
    if isinstance(n, ast.Subscript):  # int or identifier keys only
        key = n.slice.value if isinstance(n.slice, ast.Constant) else None
        plain = type(key) is int or (isinstance(key, str) and bool(_IDENT.match(key)))
        return plain and _guard_leaf(n.value, ok)
    if isinstance(n, ast.Call):
        f = n.func
        method = isinstance(f, ast.Attribute) and f.attr in _TENSOR_METHODS
        callee = method and isinstance(f.value, ast.Subscript) and _guard_leaf(f.value, ok)
        callee = callee or bool(_GUARD_CALL.match(_dotted(f)))
        return callee and not n.keywords and all(ok(a) for a in n.args)
    return bool(_GUARD_NAME.match(_dotted(n)))


# --- the guard around torch.export.load -------------------------------------------------------

_PATCH_LOCK = threading.Lock()


def _refuse(what: str) -> Callable[..., Any]:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise _Unsafe(f"loading it called {what}")

    return refuse


@contextlib.contextmanager
def _no_unsafe_loaders() -> Iterator[None]:
    """Process-wide for one load, under a lock: torch.load calls from other threads meanwhile
    are held to weights_only=True too."""
    real_load = torch.load

    def weights_only_load(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs.pop("weights_only", None) is False or kwargs.get("pickle_module"):
            raise _Unsafe("loading it needed torch.load(weights_only=False)")
        return real_load(f, map_location, weights_only=True, **kwargs)

    no_pickle = _refuse("pickle")
    patches = [
        (torch, "load", weights_only_load),
        (torch._C, "_pickle_load_obj", _refuse("the TorchScript object unpickler")),
        (_package, "pickle", types.SimpleNamespace(loads=no_pickle, load=no_pickle)),
        (_package, "_load_aoti", _refuse("the AOTInductor loader")),
    ]
    with _PATCH_LOCK:
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        try:
            for obj, name, new in patches:
                setattr(obj, name, new)
            yield
        finally:
            for obj, name, old in saved:
                setattr(obj, name, old)
