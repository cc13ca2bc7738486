"""SVD (`LowRank("svd")`) on a transformer MLP block (Linear d->4d, GELU, Linear 4d->d) of the
digits ViT: the relative reconstruction error of the block's output on its real inputs (the
token activations the trained model feeds it on held-out digits) and the block's parameters,
per rank and per energy threshold.

    .venv/bin/python tools/svd_mlp.py [--epochs 10] [--ranks 4 8 16 32 48 64]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np

import edgekit
from edgekit import samples
from edgekit.compress import LowRank, torch_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10, help="ViT training epochs (cached)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 48, 64])
    ap.add_argument("--energies", type=float, nargs="+", default=[0.5, 0.7, 0.9, 0.95, 0.99])
    args = ap.parse_args()
    import torch

    started = time.perf_counter()
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    vit = samples.train_torch_transformer(dim=args.dim, mlp=4, epochs=args.epochs)
    _, _, x_test, y_test = samples.split()
    x = torch.from_numpy(samples.to_input(x_test))
    with torch.no_grad():
        acc = samples.accuracy(vit(x).numpy(), y_test)
    block = vit.blocks[0].mlp
    seen: list[np.ndarray] = []
    hook = block.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().numpy()))
    with torch.no_grad():
        vit(x)
    hook.remove()
    tokens = seen[0]  # (digits, tokens, dim): the LayerNorm'd activations block 0's MLP sees
    with torch.no_grad():
        ref = block(torch.from_numpy(tokens)).numpy()
    full = sum(p.numel() for p in block.parameters())
    print(
        f"block: blocks.0.mlp of the digits ViT (dim {args.dim}, top-1 {acc:.4f}): "
        f"Linear {args.dim}->{4 * args.dim}, GELU, Linear {4 * args.dim}->{args.dim}; "
        f"{full:,} parameters; inputs: {tokens.shape[0]} held-out digits x {tokens.shape[1]} "
        "tokens"
    )
    print()
    print("| rule | ranks (up, down) | params | params / dense | rel. error ||y - y_r|| / ||y|| |")
    print("|---|---|---:|---:|---:|")
    rules = [("rank", r) for r in args.ranks] + [("energy", e) for e in args.energies]
    for key, value in rules:
        result = edgekit.compress(
            block,
            passes=[LowRank("svd", **{key: value})],
            example_inputs=(torch.from_numpy(tokens[:1]),),
        )
        names = torch_model.input_names(result.model)
        out = torch_model.run(result.model, {names[0]: tokens})[0]
        err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        r = result.reports[0]
        ranks = ", ".join(str(lay["after"].get("rank", "?")) for lay in r.layers) or "unchanged"
        print(
            f"| {key} {value} | {ranks} | {r.params_after:,} | {r.params_after / full:.3f} "
            f"| {err:.4f} |"
        )
    print()
    print(
        "a layer is only factored when that makes it smaller: rank r of a d x 4d Linear costs "
        f"r * 5d = {5 * args.dim} r weights against {4 * args.dim * args.dim:,} dense, so "
        f"r >= {4 * args.dim // 5 + 1} leaves it dense"
    )
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
