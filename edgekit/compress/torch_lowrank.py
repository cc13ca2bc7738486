"""PyTorch low-rank factorization: SVD, Tucker-2 and CP, each replacing one layer by a
``nn.Sequential`` of smaller ones that computes (approximately) the same function.

* ``svd``: ``nn.Linear`` and 1x1 ``nn.Conv2d`` ``W = U S V^T`` -> ``(sqrt(S) V^T)[:r]`` then
  ``(U sqrt(S))[:, :r]`` (bias on the second). Exact at full rank.
* ``tucker``: a kxk conv -> 1x1 (C_in -> r_in), kxk (r_in -> r_out, the stride/padding/
  dilation), 1x1 (r_out -> C_out, the bias). Tucker-2 on the output/input modes by HOSVD: the
  factors are the leading left singular vectors of the mode-0 and mode-1 unfoldings and the
  core is ``W x0 U_out^T x1 U_in^T`` — exact at full rank, deterministic, no iterations.
* ``cp``: a kxk conv -> 1x1 (C_in -> R), kx1 depthwise, 1xk depthwise, 1x1 (R -> C_out), the
  rank-R CP factors of tensorly's ``parafac`` (ALS with ``l2_reg``, which keeps it from the
  NaN plain ALS returns on ill-conditioned kernels; a NaN left is a ConversionError).

Ranks come from ``energy`` (smallest rank keeping that fraction of the squared singular values
of the unfolding: the matrix for SVD, the mode-0/mode-1 unfoldings for Tucker, the larger of the
two for CP), ``rank``, ``param_budget`` (fraction of the layer's parameters kept) or
``per_layer``. A layer is replaced only when the factors have fewer parameters. Grouped and
depthwise convs are skipped (their kernels are already small and per-group).
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

from edgekit.compress.passes import CompressData, LowRank
from edgekit.errors import ConversionError, UsageError, require


def _torch() -> Any:
    return require("torch", "torch")


def energy_rank(singular: Any, energy: float) -> int:
    """The smallest r whose leading ``singular**2`` hold ``energy`` of the total."""
    s2 = singular.double() ** 2
    total = float(s2.sum())
    if total == 0.0:
        return 1
    cum = s2.cumsum(0) / total
    return int((cum < energy - 1e-12).sum()) + 1


def _layer_rank(name: str, p: LowRank) -> int | None:
    for key, r in p.per_layer.items():
        if key == name or re.fullmatch(key, name):
            return int(r)
    return None


def _params(mod: Any) -> int:
    return sum(t.numel() for t in mod.parameters())


# --- SVD --------------------------------------------------------------------------------------


def _svd_rank(name: str, s: Any, rows: int, cols: int, p: LowRank) -> int | None:
    full = min(rows, cols)
    if p.per_layer:
        r = _layer_rank(name, p)
        return None if r is None else min(r, full)
    if p.rank is not None:
        return min(p.rank, full)
    if p.param_budget is not None:
        return max(1, min(full, int(p.param_budget * rows * cols / (rows + cols))))
    assert p.energy is not None
    return energy_rank(s, p.energy)


def svd_factor(mod: Any, rank: int) -> Any:
    """Two layers of rank ``rank`` for a Linear or 1x1 Conv2d."""
    torch = _torch()
    nn = torch.nn
    w = mod.weight.detach().double()
    mat = w.reshape(w.shape[0], -1)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    root = s[:rank].sqrt()
    first_w = (root[:, None] * vh[:rank]).float()
    second_w = (u[:, :rank] * root[None, :]).float()
    bias = mod.bias is not None
    if isinstance(mod, nn.Linear):
        first = nn.Linear(mod.in_features, rank, bias=False)
        second = nn.Linear(rank, mod.out_features, bias=bias)
        first.weight.data.copy_(first_w)
        second.weight.data.copy_(second_w)
    else:
        # The first 1x1 carries the stride/padding/dilation: it has no bias, so a padded
        # position is 0 there and only the second layer's bias, exactly as in the original.
        first = nn.Conv2d(
            mod.in_channels,
            rank,
            1,
            stride=mod.stride,
            padding=mod.padding,
            dilation=mod.dilation,
            bias=False,
            padding_mode=mod.padding_mode,
        )
        second = nn.Conv2d(rank, mod.out_channels, 1, bias=bias)
        first.weight.data.copy_(first_w[:, :, None, None])
        second.weight.data.copy_(second_w[:, :, None, None])
    if bias:
        second.bias.data.copy_(mod.bias.detach())
    return nn.Sequential(first, second)


# --- Tucker-2 -----------------------------------------------------------------------------------


def _unfold_svd(w: Any, mode: int) -> tuple[Any, Any]:
    torch = _torch()
    mat = w.movedim(mode, 0).reshape(w.shape[mode], -1)
    u, s, _ = torch.linalg.svd(mat, full_matrices=False)
    return u, s


def _tucker_params(c_out: int, c_in: int, k: int, r_out: int, r_in: int, bias: bool) -> int:
    return c_in * r_in + r_in * r_out * k + r_out * c_out + (c_out if bias else 0)


def _tucker_ranks(name: str, mod: Any, s_out: Any, s_in: Any, p: LowRank) -> tuple[int, int] | None:
    c_out, c_in = mod.out_channels, mod.in_channels
    if p.per_layer:
        r = _layer_rank(name, p)
        return None if r is None else (min(r, c_out), min(r, c_in))
    if p.rank is not None:
        return min(p.rank, c_out), min(p.rank, c_in)
    if p.param_budget is not None:
        k = int(math.prod(mod.kernel_size))
        budget = p.param_budget * _params(mod)
        best = (1, 1)
        # Both ranks as the same fraction of their channels: the largest that fits.
        for step in range(1, 101):
            a = step / 100
            r_out, r_in = max(1, round(a * c_out)), max(1, round(a * c_in))
            if _tucker_params(c_out, c_in, k, r_out, r_in, mod.bias is not None) <= budget:
                best = (r_out, r_in)
        return best
    assert p.energy is not None
    return energy_rank(s_out, p.energy), energy_rank(s_in, p.energy)


def tucker_factor(mod: Any, r_out: int, r_in: int) -> Any:
    """1x1 -> kxk -> 1x1 convs of Tucker-2 ranks (r_out, r_in) for a kxk Conv2d (HOSVD)."""
    torch = _torch()
    nn = torch.nn
    w = mod.weight.detach().double()
    u_out, _ = _unfold_svd(w, 0)
    u_in, _ = _unfold_svd(w, 1)
    u_out, u_in = u_out[:, :r_out], u_in[:, :r_in]
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    first = nn.Conv2d(mod.in_channels, r_in, 1, bias=False)
    middle = nn.Conv2d(
        r_in,
        r_out,
        mod.kernel_size,
        stride=mod.stride,
        padding=mod.padding,
        dilation=mod.dilation,
        bias=False,
        padding_mode=mod.padding_mode,
    )
    last = nn.Conv2d(r_out, mod.out_channels, 1, bias=mod.bias is not None)
    first.weight.data.copy_(u_in.T.float()[:, :, None, None])
    middle.weight.data.copy_(core.float())
    last.weight.data.copy_(u_out.float()[:, :, None, None])
    if mod.bias is not None:
        last.bias.data.copy_(mod.bias.detach())
    return nn.Sequential(first, middle, last)


# --- CP -----------------------------------------------------------------------------------------


def _cp_rank(name: str, mod: Any, p: LowRank) -> int | None:
    kh, kw = mod.kernel_size
    per_rank = mod.in_channels + kh + kw + mod.out_channels
    if p.per_layer:
        return _layer_rank(name, p)
    if p.rank is not None:
        return p.rank
    if p.param_budget is not None:
        return max(1, int(p.param_budget * _params(mod) / per_rank))
    assert p.energy is not None
    w = mod.weight.detach().double()
    return max(
        energy_rank(_unfold_svd(w, 0)[1], p.energy), energy_rank(_unfold_svd(w, 1)[1], p.energy)
    )


def cp_factor(mod: Any, rank: int, l2_reg: float, name: str = "conv") -> Any:
    """1x1 -> kx1 (depthwise) -> 1xk (depthwise) -> 1x1 convs of CP rank ``rank``."""
    torch = _torch()
    nn = torch.nn
    tl = require("tensorly", "compress")
    decomposition = require("tensorly.decomposition", "compress")
    w = mod.weight.detach().double().cpu().numpy()
    tl.set_backend("numpy")
    try:
        with warnings.catch_warnings():
            # tensorly warns when the rank exceeds a mode's size (it then caps the SVD init).
            warnings.simplefilter("ignore", UserWarning)
            cp = decomposition.parafac(
                w, rank=rank, l2_reg=l2_reg, init="svd", n_iter_max=200, tol=1e-7, random_state=0
            )
    except Exception as exc:
        raise ConversionError(f"CP decomposition of {name} failed: {exc}") from exc
    weights, (a_out, b_in, c_h, d_w) = cp
    a_out = a_out * weights[None, :]
    if not all(torch.isfinite(torch.as_tensor(f)).all() for f in (a_out, b_in, c_h, d_w)):
        raise ConversionError(
            f"CP decomposition of {name} at rank {rank} returned NaN/inf; raise cp_l2_reg "
            "or use tucker for this layer"
        )
    kh, kw = mod.kernel_size
    sh, sw = mod.stride
    ph, pw = mod.padding if isinstance(mod.padding, tuple) else (0, 0)
    dh, dw = mod.dilation
    first = nn.Conv2d(mod.in_channels, rank, 1, bias=False)
    vertical = nn.Conv2d(
        rank,
        rank,
        (kh, 1),
        stride=(sh, 1),
        padding=(ph, 0),
        dilation=(dh, 1),
        groups=rank,
        bias=False,
    )
    horizontal = nn.Conv2d(
        rank,
        rank,
        (1, kw),
        stride=(1, sw),
        padding=(0, pw),
        dilation=(1, dw),
        groups=rank,
        bias=False,
    )
    last = nn.Conv2d(rank, mod.out_channels, 1, bias=mod.bias is not None)
    t = lambda a: torch.as_tensor(a).float()  # noqa: E731
    first.weight.data.copy_(t(b_in).T[:, :, None, None])
    vertical.weight.data.copy_(t(c_h).T[:, None, :, None])
    horizontal.weight.data.copy_(t(d_w).T[:, None, None, :])
    last.weight.data.copy_(t(a_out)[:, :, None, None])
    if mod.bias is not None:
        last.bias.data.copy_(mod.bias.detach())
    return nn.Sequential(first, vertical, horizontal, last)


# --- the pass -----------------------------------------------------------------------------------


def _replace(root: Any, name: str, new: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def apply(
    model: Any, p: LowRank, data: CompressData
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    torch = _torch()
    nn = torch.nn
    from edgekit.compress.torch_model import copy_model

    for pat in p.ignore:
        try:
            re.compile(pat)
        except re.error as exc:
            raise UsageError(f"--ignore {pat!r} is not a regular expression: {exc}") from None
    new = copy_model(model)
    changed: list[dict[str, Any]] = []
    notes: list[str] = []
    skipped_groups: list[str] = []
    for name, mod in list(new.named_modules()):
        if not name or any(re.search(pat, name) for pat in p.ignore):
            continue
        is_linear = isinstance(mod, nn.Linear)
        is_conv = isinstance(mod, nn.Conv2d)
        if not (is_linear or is_conv):
            continue
        if is_conv and mod.groups > 1:
            skipped_groups.append(name)
            continue
        if is_conv and isinstance(mod.padding, str):
            notes.append(f"{name}: padding={mod.padding!r} kept as is")
            continue
        pointwise = is_linear or tuple(mod.kernel_size) == (1, 1)
        if p.method == "svd" or pointwise:
            if not pointwise:
                continue  # svd factors 1x1 convs and Linear; tucker/cp are for kxk
            w = mod.weight.detach().double()
            mat = w.reshape(w.shape[0], -1)
            s = torch.linalg.svdvals(mat)
            rank = _svd_rank(name, s, mat.shape[0], mat.shape[1], p)
            if rank is None:
                continue
            factored = svd_factor(mod, rank)
            after: Any = {"rank": rank}
        elif p.method == "tucker":
            w = mod.weight.detach().double()
            ranks = _tucker_ranks(name, mod, _unfold_svd(w, 0)[1], _unfold_svd(w, 1)[1], p)
            if ranks is None:
                continue
            factored = tucker_factor(mod, *ranks)
            after = {"rank": list(ranks)}
        else:
            rank = _cp_rank(name, mod, p)
            if rank is None:
                continue
            factored = cp_factor(mod, rank, p.cp_l2_reg, name)
            after = {"rank": rank}
        before_params, after_params = _params(mod), _params(factored)
        if after_params >= before_params:
            continue
        _replace(new, name, factored.train(mod.training))
        after["params"] = after_params
        changed.append(
            {
                "layer": name,
                "before": {"shape": list(mod.weight.shape), "params": before_params},
                "after": after,
            }
        )
    if skipped_groups:
        notes.append(f"grouped/depthwise convs skipped: {', '.join(skipped_groups)}")
    if p.method != "svd":
        notes.append(f"{p.method}: 1x1 convs and Linear layers are factored by SVD")
    if not changed:
        notes.append("no layer got smaller at these ranks: nothing replaced")
    return new.eval(), changed, notes
