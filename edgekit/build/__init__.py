"""``edgekit build``: one config (``edgekit.toml``, :mod:`edgekit.build.config`), a matrix of
models x targets x precisions, a content-hash cache (:mod:`edgekit.build.cache`), a manifest
with a toolchain lock, budgets as gates, a markdown summary, JUnit XML
(:mod:`edgekit.build.run`), regressions against a baseline manifest
(:mod:`edgekit.build.baseline`) and a self-contained report.html (:mod:`edgekit.build.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.build.config import EXAMPLE, SCHEMA_VERSION, BuildConfig, load_config


def build(
    config: str | Path | BuildConfig = "edgekit.toml",
    output_dir: str | Path = "edgekit-build",
    *,
    use_cache: bool = True,
    keep_going: bool = False,
    cache_dir: str | Path | None = None,
    baseline: str | Path | None = None,
) -> dict[str, Any]:
    """Build every cell of ``config``; the manifest (also ``output_dir/manifest.json``).
    ``baseline``: an earlier build's manifest.json (or its folder) to compare against."""
    from edgekit.build.run import build as run

    loaded = config if isinstance(config, BuildConfig) else load_config(config)
    return run(
        loaded,
        output_dir,
        use_cache=use_cache,
        keep_going=keep_going,
        cache_dir=cache_dir,
        baseline=baseline,
    )


__all__ = ["EXAMPLE", "SCHEMA_VERSION", "BuildConfig", "build", "load_config"]
