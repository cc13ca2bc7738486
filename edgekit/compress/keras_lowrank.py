"""Low-rank factorisation of Keras 3 Dense and Conv2D layers (SVD, Tucker-2, CP).

* ``svd``: a Dense layer or 1x1 Conv2D with kernel W (in x out) becomes two layers of rank r,
  ``W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``; the first has no bias or activation, the second
  keeps the original bias and activation.
* ``tucker``: a kxk Conv2D (kernel kh x kw x cin x cout) becomes 1x1 (cin -> r1), kxk
  (r1 -> r2, the original strides/padding/dilation) and 1x1 (r2 -> cout, bias, activation):
  Tucker-2 over the channel modes, fitted by HOSVD and refined by a few HOOI sweeps (numpy).
* ``cp``: a kxk Conv2D becomes 1x1 (cin -> R), kx1 and 1xk per-channel factors (depthwise
  convolutions) and 1x1 (R -> cout): a rank-R CP decomposition by tensorly's ALS with an L2
  regulariser (unregularised ALS can diverge to NaN, which is refused).

The last factor carries the layer's name, so the model's output names survive. A layer is only
replaced when its factors have fewer parameters.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.compress import keras_model as km
from edgekit.compress.passes import CompressData, LowRank
from edgekit.errors import ConversionError, require

HOOI_SWEEPS = 10
CP_ITERATIONS = 200


def energy_rank(s: np.ndarray, energy: float) -> int:
    """Smallest rank whose squared singular values keep ``energy`` of the total."""
    e = np.cumsum(s.astype(np.float64) ** 2)
    if e[-1] <= 0:
        return 1
    return int(np.searchsorted(e / e[-1], energy - 1e-12) + 1)


def _unfold(t: np.ndarray, mode: int) -> np.ndarray:
    return np.moveaxis(t, mode, 0).reshape(t.shape[mode], -1)


def _mode_product(t: np.ndarray, m: np.ndarray, mode: int) -> np.ndarray:
    """``t`` with axis ``mode`` multiplied by ``m`` (shape new x old)."""
    return np.moveaxis(np.tensordot(m, t, axes=(1, mode)), 0, mode)


def tucker2(kernel: np.ndarray, r1: int, r2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Core (kh, kw, r1, r2), U_in (cin, r1), U_out (cout, r2) with
    kernel ~ core x_2 U_in x_3 U_out."""
    k = kernel.astype(np.float64)
    u_in = np.linalg.svd(_unfold(k, 2), full_matrices=False)[0][:, :r1]
    u_out = np.linalg.svd(_unfold(k, 3), full_matrices=False)[0][:, :r2]
    for _ in range(HOOI_SWEEPS):
        u_in = np.linalg.svd(_unfold(_mode_product(k, u_out.T, 3), 2), full_matrices=False)[0]
        u_in = u_in[:, :r1]
        u_out = np.linalg.svd(_unfold(_mode_product(k, u_in.T, 2), 3), full_matrices=False)[0]
        u_out = u_out[:, :r2]
    core = _mode_product(_mode_product(k, u_in.T, 2), u_out.T, 3)
    return core, u_in, u_out


def cp(kernel: np.ndarray, rank: int, l2_reg: float, layer: str) -> tuple[np.ndarray, list]:
    """CP weights and factors [A_h, A_w, A_in, A_out] of a conv kernel; NaN is refused."""
    tl = require("tensorly", "compress")
    decomposition = require("tensorly.decomposition", "compress")
    t = kernel.astype(np.float64)
    # numpy arrays in and out, whatever backend another part of the process chose globally
    try:
        with tl.backend_context("numpy"), warnings.catch_warnings():
            # rank above a mode's size (3 for a 3x3 kernel): tensorly fills the SVD start's
            # missing columns from the seeded generator and says so; that start is what we want
            warnings.filterwarnings("ignore", message="Trying to compute SVD")
            weights, factors = decomposition.parafac(
                t,
                rank=rank,
                n_iter_max=CP_ITERATIONS,
                init="svd",
                l2_reg=l2_reg,
                tol=1e-9,
                random_state=0,
            )
    except Exception as exc:
        raise ConversionError(f"CP decomposition of {layer} (rank {rank}) failed: {exc}") from exc
    if not np.all(np.isfinite(weights)) or not all(np.all(np.isfinite(f)) for f in factors):
        raise ConversionError(
            f"CP decomposition of {layer} (rank {rank}) diverged to NaN; raise cp_l2_reg or "
            "use tucker"
        )
    return np.asarray(weights), [np.asarray(f) for f in factors]


def balance(weights: np.ndarray, factors: list[np.ndarray]) -> list[np.ndarray]:
    """The CP factors with every rank-one term's scale spread evenly over its four columns
    (the sign on the last): the same product, but no factor tiny next to another, which
    keeps fine-tuning the factor chain with one learning rate well conditioned."""
    norms = [np.linalg.norm(f, axis=0) for f in factors]
    scale = np.abs(weights) * np.prod(norms, axis=0)
    each = scale ** (1.0 / len(factors))
    out = [f / np.maximum(n, 1e-30) * each for f, n in zip(factors, norms, strict=True)]
    out[-1] = out[-1] * np.sign(weights)
    return out


def _reconstruct_cp(weights: np.ndarray, factors: list[np.ndarray]) -> np.ndarray:
    a, b, c, d = factors
    return np.einsum("r,ir,jr,kr,lr->ijkl", weights, a, b, c, d)


def _choose(p: LowRank, name: str, default: Callable[[], int | None]) -> int | None:
    if p.per_layer:
        return p.per_layer.get(name)
    return default()


def _rel_error(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(approx - exact) / max(np.linalg.norm(exact), 1e-12))


def apply(model: Any, p: LowRank, data: CompressData) -> tuple[Any, list[dict], list[str]]:
    k = km.keras()
    calls = km.call_counts(model)
    replace: dict[str, km.ReplaceFn] = {}
    changes: list[dict] = []
    notes: list[str] = []
    taken: set[str] = set()
    for layer in model.layers:
        cls = type(layer).__name__
        if cls not in ("Dense", "Conv2D") or calls.get(layer.name, 0) != 1 or not km.plain(layer):
            continue
        if any(re.search(pat, layer.name) for pat in p.ignore):
            continue
        if cls == "Conv2D" and (layer.groups != 1 or layer.data_format != "channels_last"):
            continue
        w = layer.get_weights()
        kernel, bias = w[0], (w[1] if len(w) > 1 else None)
        one_by_one = cls == "Dense" or tuple(layer.kernel_size) == (1, 1)
        if p.method == "svd" and one_by_one:
            built = _svd(k, model, layer, kernel, bias, p, taken)
        elif p.method == "tucker" and not one_by_one:
            built = _tucker(k, model, layer, kernel, bias, p, taken)
        elif p.method == "cp" and not one_by_one:
            built = _cp(k, model, layer, kernel, bias, p, taken, notes)
        else:
            continue
        if built is None:
            continue
        fn, change = built
        replace[layer.name] = fn
        changes.append(change)
    if not replace:
        notes.append(f"no layer gets smaller with {p.method} at this rank rule: model unchanged")
    return km.rebuild(model, replace=replace), changes, notes


def _change(layer: Any, kernel: np.ndarray, rank: Any, params: int, error: float) -> dict:
    return {
        "layer": layer.name,
        "before": {"kernel": list(kernel.shape), "params": int(kernel.size)},
        "after": {"rank": rank, "params": int(params), "error": round(error, 6)},
    }


def _chain(steps: list[tuple[Any, list[np.ndarray]]]) -> km.ReplaceFn:
    """A replacement call: apply the new layers in order, then load their weights."""

    def fn(x: Any, *args: Any, **kwargs: Any) -> Any:
        for layer, weights in steps:
            x = layer(x)
            layer.set_weights([w.astype(np.float32) for w in weights])
        return x

    return fn


def _last(k: Any, layer: Any, cout: int, bias: np.ndarray | None) -> tuple[Any, list]:
    """The final 1x1 factor: the original name, bias and activation."""
    common = {
        "activation": layer.get_config()["activation"],
        "use_bias": bias is not None,
        "name": layer.name,
    }
    if type(layer).__name__ == "Dense":
        return k.layers.Dense(cout, **common), []
    return k.layers.Conv2D(cout, 1, **common), []


def _svd(
    k: Any, model: Any, layer: Any, kernel: np.ndarray, bias: Any, p: LowRank, taken: set[str]
) -> tuple[km.ReplaceFn, dict] | None:
    dense = type(layer).__name__ == "Dense"
    mat = kernel.reshape(kernel.shape[-2], kernel.shape[-1]).astype(np.float64)
    n_in, n_out = mat.shape
    u, s, vt = np.linalg.svd(mat, full_matrices=False)
    r = _choose(
        p,
        layer.name,
        lambda: (
            energy_rank(s, p.energy)
            if p.energy is not None
            else p.rank
            if p.rank is not None
            else max(1, math.floor(p.param_budget * n_in * n_out / (n_in + n_out)))
        ),
    )
    if r is None:
        return None
    r = min(r, len(s))
    params = r * (n_in + n_out)
    if params >= n_in * n_out:
        return None
    root = np.sqrt(s[:r])
    first_w = u[:, :r] * root
    second_w = root[:, None] * vt[:r]
    name = km.unique_name(model, f"{layer.name}_svd", taken)
    if dense:
        first = k.layers.Dense(r, use_bias=False, name=name)
    else:
        first = k.layers.Conv2D(
            r, 1, strides=layer.strides, padding=layer.padding, use_bias=False, name=name
        )
        first_w = first_w[None, None]
        second_w = second_w[None, None]
    last, _ = _last(k, layer, n_out, bias)
    tail = [second_w] + ([bias] if bias is not None else [])
    err = _rel_error(first_w.reshape(n_in, r) @ second_w.reshape(r, n_out), mat)
    fn = _chain([(first, [first_w]), (last, tail)])
    return fn, _change(layer, kernel, r, params, err)


def _tucker(
    k: Any, model: Any, layer: Any, kernel: np.ndarray, bias: Any, p: LowRank, taken: set[str]
) -> tuple[km.ReplaceFn, dict] | None:
    kh, kw, cin, cout = kernel.shape
    full = kernel.size

    def default() -> tuple[int, int]:
        if p.energy is not None:
            s_in = np.linalg.svd(_unfold(kernel, 2), compute_uv=False)
            s_out = np.linalg.svd(_unfold(kernel, 3), compute_uv=False)
            return energy_rank(s_in, p.energy), energy_rank(s_out, p.energy)
        if p.rank is not None:
            return p.rank, p.rank
        # params(a) = a (cin^2 + cout^2) + a^2 kh kw cin cout for r1 = a cin, r2 = a cout
        qa, qb, qc = kh * kw * cin * cout, cin * cin + cout * cout, -p.param_budget * full
        a = (-qb + math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
        return max(1, math.floor(a * cin)), max(1, math.floor(a * cout))

    if p.per_layer:
        if layer.name not in p.per_layer:
            return None
        r1 = r2 = p.per_layer[layer.name]
    else:
        r1, r2 = default()
    r1, r2 = min(r1, cin), min(r2, cout)
    params = cin * r1 + kh * kw * r1 * r2 + r2 * cout
    if params >= full:
        return None
    core, u_in, u_out = tucker2(kernel, r1, r2)
    approx = _mode_product(_mode_product(core, u_in, 2), u_out, 3)
    first = k.layers.Conv2D(
        r1, 1, use_bias=False, name=km.unique_name(model, f"{layer.name}_tucker_in", taken)
    )
    middle = k.layers.Conv2D(
        r2,
        (kh, kw),
        strides=layer.strides,
        padding=layer.padding,
        dilation_rate=layer.dilation_rate,
        use_bias=False,
        name=km.unique_name(model, f"{layer.name}_tucker_core", taken),
    )
    last, _ = _last(k, layer, cout, bias)
    tail = [u_out.T[None, None]] + ([bias] if bias is not None else [])
    fn = _chain([(first, [u_in[None, None]]), (middle, [core]), (last, tail)])
    return fn, _change(layer, kernel, [r1, r2], params, _rel_error(approx, kernel))


def _cp(
    k: Any,
    model: Any,
    layer: Any,
    kernel: np.ndarray,
    bias: Any,
    p: LowRank,
    taken: set[str],
    notes: list[str],
) -> tuple[km.ReplaceFn, dict] | None:
    kh, kw, cin, cout = kernel.shape
    per_rank = cin + kh + kw + cout

    def default() -> int:
        if p.energy is not None:
            # CP has no singular values: take the larger energy rank of the channel modes
            s_in = np.linalg.svd(_unfold(kernel, 2), compute_uv=False)
            s_out = np.linalg.svd(_unfold(kernel, 3), compute_uv=False)
            return max(energy_rank(s_in, p.energy), energy_rank(s_out, p.energy))
        if p.rank is not None:
            return p.rank
        return max(1, math.floor(p.param_budget * kernel.size / per_rank))

    r = _choose(p, layer.name, default)
    if r is None or r * per_rank >= kernel.size:
        return None
    weights, factors = cp(kernel, r, p.cp_l2_reg, layer.name)
    approx = _reconstruct_cp(weights, factors)
    a_h, a_w, a_in, a_out = balance(weights, factors)
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    if (sh, sw) == (1, 1):
        vertical = k.layers.DepthwiseConv2D(
            (kh, 1),
            padding=layer.padding,
            dilation_rate=(dh, 1),
            use_bias=False,
            name=km.unique_name(model, f"{layer.name}_cp_h", taken),
        )
        horizontal = k.layers.DepthwiseConv2D(
            (1, kw),
            padding=layer.padding,
            dilation_rate=(1, dw),
            use_bias=False,
            name=km.unique_name(model, f"{layer.name}_cp_w", taken),
        )
        v_w, h_w = a_h[:, None, :, None], a_w[None, :, :, None]
    else:
        # TensorFlow's depthwise kernel takes only equal strides: a grouped conv with one
        # channel per group is the same operation with (sh, 1) / (1, sw) strides
        notes.append(f"{layer.name}: strided CP factors are grouped Conv2D (groups={r})")
        vertical = k.layers.Conv2D(
            r,
            (kh, 1),
            strides=(sh, 1),
            padding=layer.padding,
            dilation_rate=(dh, 1),
            groups=r,
            use_bias=False,
            name=km.unique_name(model, f"{layer.name}_cp_h", taken),
        )
        horizontal = k.layers.Conv2D(
            r,
            (1, kw),
            strides=(1, sw),
            padding=layer.padding,
            dilation_rate=(1, dw),
            groups=r,
            use_bias=False,
            name=km.unique_name(model, f"{layer.name}_cp_w", taken),
        )
        v_w, h_w = a_h[:, None, None, :], a_w[None, :, None, :]
    first = k.layers.Conv2D(
        r, 1, use_bias=False, name=km.unique_name(model, f"{layer.name}_cp_in", taken)
    )
    last, _ = _last(k, layer, cout, bias)
    tail = [a_out.T[None, None]] + ([bias] if bias is not None else [])
    fn = _chain([(first, [a_in[None, None]]), (vertical, [v_w]), (horizontal, [h_w]), (last, tail)])
    return fn, _change(layer, kernel, r, r * per_rank, _rel_error(approx, kernel))
