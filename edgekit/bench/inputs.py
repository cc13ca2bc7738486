"""Parent side of ``--inputs``: one file keyed by the source model's input names, in the source
layout, feeds every artifact exported from that model.

An artifact's inputs may be named and laid out unlike its source's: a TFLite export of a
PyTorch model takes ``args_0`` in NHWC where the model took ``input`` in NCHW. Export records
that map (``backend_details.io_map`` in the sidecar; a TFLite file also carries it inside).
Here, in edgekit's process, the arrays are renamed and transposed into a per-artifact copy of
the inputs file, so that the runners on a device stay free of edgekit and its maps.

Map entries (``io_map["inputs"]``): ``name`` (source), ``signature`` (the artifact's name), and
for a transposed input ``perm``, ``layout``, ``shape``, ``source_layout``, ``source_shape``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekit.errors import DataError


def renames_or_transposes(io_map: Mapping[str, Any] | None) -> bool:
    """Whether ``io_map`` changes any input's name or layout."""
    return any(e["name"] != e["signature"] or e.get("perm") for e in _entries(io_map))


def _entries(io_map: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    entries = (io_map or {}).get("inputs") or []
    return [e for e in entries if isinstance(e, Mapping) and "name" in e and "signature" in e]


def prepare(source: Path, io_map: Mapping[str, Any] | None, workdir: Path) -> Path:
    """``source`` as the artifact described by ``io_map`` takes it: each source-named array
    under the artifact's name, source-layout arrays transposed. Arrays already named and laid
    out as the artifact wants pass unchanged. Returns ``source`` itself when nothing changes."""
    if not renames_or_transposes(io_map):
        return source
    import numpy as np

    arrays = _load(source)
    entries = _entries(io_map)
    single = len(arrays) == 1 and len(entries) == 1
    out: dict[str, Any] = {}
    used: set[str] = set()
    for e in entries:
        if e["name"] in arrays:
            key = e["name"]
        elif e["signature"] in arrays:
            key = e["signature"]
        elif single:
            key = next(iter(arrays))
        else:
            raise DataError(
                f"--inputs {source} has no array named '{e['name']}' (it has: "
                f"{', '.join(arrays) or 'none'}); save one array per input under the source "
                "model's input name"
            )
        used.add(key)
        out[e["signature"]] = _to_artifact_layout(arrays[key], e, source)
    for key, arr in arrays.items():
        if key not in used and key:
            out.setdefault(key, arr)
    dst = workdir / f"{source.stem}.npz"
    np.savez(dst, **out)
    return dst


def _load(source: Path) -> dict[str, Any]:
    import numpy as np

    try:
        loaded = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"--inputs {source}: cannot read it ({exc})") from None
    if hasattr(loaded, "files"):
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    return {"": loaded}


def _to_artifact_layout(arr: Any, e: Mapping[str, Any], source: Path) -> Any:
    import numpy as np

    perm = e.get("perm")
    if not perm or arr.ndim != len(perm):
        return arr  # the runner reports a rank that fits neither
    shape, source_shape = e.get("shape"), e.get("source_shape")
    # The batch dimension is left out: a file may hold more rows than the batch it feeds.
    if shape and _fits(arr.shape[1:], shape[1:]):
        return arr
    if not source_shape or _fits(arr.shape[1:], source_shape[1:]):
        return np.ascontiguousarray(np.transpose(arr, perm))
    raise DataError(
        f"input '{e['name']}': --inputs {source} holds shape {list(arr.shape)}; the model takes "
        f"{list(source_shape)} ({e.get('source_layout', 'source layout')}) or {list(shape or [])} "
        f"({e.get('layout', 'artifact layout')})"
    )


def _fits(have: Sequence[int], want: Sequence[Any]) -> bool:
    """``have`` matches ``want``, where a non-integer dimension in ``want`` is dynamic."""
    return len(have) == len(want) and all(
        not isinstance(w, int) or w < 0 or int(h) == w for h, w in zip(have, want, strict=True)
    )


def describe(fed: Sequence[Mapping[str, Any]], io_map: Mapping[str, Any] | None) -> list[dict]:
    """The runner's ``inputs`` (artifact names) as the result reports them: by source name,
    with the artifact's signature name and layout where they differ."""
    by_signature = {e["signature"]: e for e in _entries(io_map)}
    out = []
    for item in fed:
        e = by_signature.get(item.get("name"))
        if e is None:
            out.append(dict(item))
            continue
        entry = {**item, "name": e["name"]}
        if e["name"] != e["signature"]:
            entry["signature"] = e["signature"]
        if e.get("perm"):
            entry["layout"] = e.get("layout")
            entry["source_layout"] = e.get("source_layout")
        out.append(entry)
    return out
