"""``edgekit build``: one config (``edgekit.toml``, :mod:`edgekit.build.config`), a matrix of
models x targets x precisions, a content-hash cache (:mod:`edgekit.build.cache`), a manifest
with a toolchain lock, budgets as gates, a markdown summary, JUnit XML
(:mod:`edgekit.build.run`), regressions against a baseline manifest
(:mod:`edgekit.build.baseline`) and a self-contained report.html (:mod:`edgekit.build.report`).

``from edgekit.build import build``; ``build(config, output_dir)`` takes a path or a loaded
:class:`BuildConfig` and returns the manifest (also ``output_dir/manifest.json``)."""

from __future__ import annotations

from edgekit.build.config import EXAMPLE, SCHEMA_VERSION, BuildConfig, load_config
from edgekit.build.run import build

__all__ = ["EXAMPLE", "SCHEMA_VERSION", "BuildConfig", "build", "load_config"]
