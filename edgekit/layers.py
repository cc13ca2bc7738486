"""Layers and layer rules: one meaning of a layer pattern on every backend.

A *layer* is one quantizable operation of a converted model (a convolution, a matrix product,
an attention's matmul), named by the **source model's** name for it wherever the backend can
trace it back (the ONNX node name, the torch module path such as ``features.0``, the Keras
layer name), else by the backend's own name. Each backend lists its layers
(``backend.layers(converted)``) with the native names its quantizer needs, so a rule written
once is mapped onto ORT's ``nodes_to_exclude`` / tensor overrides, NNCF's ``IgnoredScope`` and
ai-edge-quantizer's regex rules without the user knowing any of them.

A *rule* is ``pattern -> precision``. The pattern is a Python regular expression that must match
the **whole** layer name (``re.fullmatch``), so a plain name is an exact name and ``.*conv.*``
a substring. Rules are ordered and the last match wins (as in ai-edge-quantizer's recipes). A
rule that matches no layer is an error, never a silent no-op: a typo would otherwise quantize
the very layer the user meant to protect.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import UsageError

#: what a rule can ask for a layer. ``float``: not quantized (fp32 compute); ``int8``: the
#: recipe's int8 scheme; ``int16``: 16-bit activations with 8-bit weights where the backend
#: has such kernels; ``fp16``: fp16 weights (the layer computes in float)
LAYER_PRECISIONS: tuple[str, ...] = ("int8", "int16", "fp16", "float")


@dataclass(frozen=True)
class Layer:
    """One quantizable op. ``name`` is what patterns match; ``native`` are the backend's own
    names for it (what its quantizer's options take); ``op`` is the op type as the backend
    spells it (``Conv``, ``MatMul``, ``Convolution``, ``FULLY_CONNECTED``)."""

    name: str
    op: str
    native: tuple[str, ...]
    #: ``layer``: a weighted or matrix op, listed alike on every backend; ``op``: an
    #: elementwise or pooling op the backend's quantizer also quantizes on its own (ORT's QDQ
    #: Add, Mul, Softmax; LiteRT's ADD, SOFTMAX, ...): rules and the accuracy gate reach it,
    #: cross-backend comparisons of layers leave it out
    kind: str = "layer"
    #: False for a product of two activations (an attention's QK^T and AV) and for every op:
    #: quantizing it saves no weight bytes, and where its integer kernel is slow (LiteRT's int8
    #: BATCH_MATMUL) it only costs time, which the accuracy gate's speed step acts on
    weighted: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "native": list(self.native),
            "kind": self.kind,
            "weighted": self.weighted,
        }


@dataclass(frozen=True)
class Rule:
    """``pattern`` (a regex that must match the whole layer name) -> ``precision``."""

    pattern: str
    precision: str
    #: where the rule came from, for messages (``--rules``, ``--keep-float``, ``the gate``)
    origin: str = field(default="layer rule", compare=False)

    def compiled(self) -> re.Pattern[str]:
        try:
            return re.compile(self.pattern)
        except re.error as exc:
            raise UsageError(
                f"{self.origin} '{self.pattern}' is not a valid regular expression ({exc}); "
                "escape special characters, e.g. 'conv\\.1'"
            ) from None

    def matches(self, name: str) -> bool:
        return self.compiled().fullmatch(name) is not None

    def to_json(self) -> dict[str, str]:
        return {"pattern": self.pattern, "precision": self.precision}


def parse_rules(raw: Any, where: str = "--rules") -> tuple[Rule, ...]:
    """Rules from a recipe file: a list of ``{pattern = "...", precision = "..."}`` tables (or
    ``[pattern, precision]`` pairs), or a ``{pattern: precision}`` table (ordered as written)."""
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        items: Iterable[Any] = [{"pattern": k, "precision": v} for k, v in raw.items()]
    elif isinstance(raw, list | tuple):
        items = raw
    else:
        raise UsageError(
            f"{where} must be a list of {{pattern, precision}} tables, got {type(raw).__name__}"
        )
    rules = []
    for i, item in enumerate(items):
        if isinstance(item, Rule):
            rule = item
        elif isinstance(item, Mapping):
            extra = sorted(set(item) - {"pattern", "precision"})
            if extra or "pattern" not in item or "precision" not in item:
                raise UsageError(
                    f"{where}[{i}] must have exactly the keys 'pattern' and 'precision', got "
                    f"{sorted(item)}"
                )
            rule = Rule(item["pattern"], item["precision"], where)
        elif isinstance(item, list | tuple) and len(item) == 2:
            rule = Rule(item[0], item[1], where)
        else:
            raise UsageError(f"{where}[{i}] must be a {{pattern, precision}} table, got {item!r}")
        check_rule(rule, f"{where}[{i}]")
        rules.append(rule)
    return tuple(rules)


def check_rule(rule: Rule, where: str = "rule") -> None:
    if not isinstance(rule.pattern, str) or not rule.pattern:
        raise UsageError(f"{where}: pattern must be a non-empty string, got {rule.pattern!r}")
    if rule.precision not in LAYER_PRECISIONS:
        raise UsageError(
            f"{where}: precision '{rule.precision}' for '{rule.pattern}' is not one of "
            f"{', '.join(LAYER_PRECISIONS)}"
        )
    rule.compiled()


def _sample(layers: Sequence[Layer], n: int = 8) -> str:
    names = [layer.name for layer in layers[:n]]
    return ", ".join(names) + (" ..." if len(layers) > n else "") if names else "none"


def assign(
    layers: Sequence[Layer], rules: Sequence[Rule], backend: str = "this backend"
) -> dict[str, str]:
    """Layer name -> precision for every layer a rule matches (last match wins); layers no rule
    matches are absent (they get the recipe's precision). A rule matching nothing raises."""
    chosen: dict[str, str] = {}
    for rule in rules:
        rx = rule.compiled()
        hit = [layer for layer in layers if rx.fullmatch(layer.name)]
        if not hit:
            raise UsageError(
                f"{rule.origin} '{rule.pattern}' matches no layer of the {backend} model (a "
                f"pattern must match the whole name; use '.*{rule.pattern}.*' for a part); "
                f"its layers are {_sample(layers)} (edgekit inspect MODEL --target T --layers "
                "lists them all)"
            )
        for layer in hit:
            chosen[layer.name] = rule.precision
    return chosen


def native_names(layers: Sequence[Layer], chosen: Mapping[str, str], precision: str) -> list[str]:
    """The backend names of the layers ``chosen`` puts at ``precision``, in layer order."""
    out: list[str] = []
    for layer in layers:
        if chosen.get(layer.name) == precision:
            out += [n for n in layer.native if n not in out]
    return out


def unique(layers: Sequence[Layer]) -> list[Layer]:
    """Layers with names made unique (``name``, ``name#2``, ...): two ops traced back to one
    source layer (a torch module called twice) must still be told apart by a rule."""
    seen: dict[str, int] = {}
    out = []
    for layer in layers:
        count = seen.get(layer.name, 0) + 1
        seen[layer.name] = count
        name = layer.name if count == 1 else f"{layer.name}#{count}"
        out.append(Layer(name, layer.op, layer.native, layer.kind, layer.weighted))
    return out


@dataclass(frozen=True)
class LayerPlan:
    """The rules of a recipe resolved against one backend model's layers: what each layer
    gets and the native names the backend's quantizer options take."""

    layers: tuple[Layer, ...]
    #: layer name -> precision, for the layers a rule matched
    chosen: Mapping[str, str]

    def native(self, precision: str) -> list[str]:
        return native_names(self.layers, self.chosen, precision)

    def names(self, precision: str) -> list[str]:
        return [layer.name for layer in self.layers if self.chosen.get(layer.name) == precision]

    def to_json(self) -> dict[str, Any]:
        return {"layers": len(self.layers), "assigned": dict(self.chosen)}


def plan_layers(
    layers: Sequence[Layer],
    rules: Sequence[Rule],
    backend: str,
    allowed: Sequence[str],
    precision: str,
) -> LayerPlan:
    """Resolve ``rules`` against ``layers``; a layer precision the backend has no mechanism for
    at this recipe ``precision`` is refused (the plan stage refuses it earlier from the
    backend's capabilities; this guards the Python API's direct calls)."""
    for rule in rules:
        if rule.precision not in allowed:
            raise UsageError(
                f"{rule.origin} '{rule.pattern}' -> {rule.precision}: {backend} at precision "
                f"{precision} can put layers at {', '.join(allowed) or 'nothing but its own'}"
            )
    chosen = assign(layers, rules, backend)
    unnamed = [layer.name for layer in layers if layer.name in chosen and not layer.native]
    if unnamed:
        # The backend's quantizer addresses ops by name only: a rule on a nameless op would
        # be silently dropped there.
        raise UsageError(
            f"layer(s) {', '.join(unnamed[:6])} have no name {backend}'s quantizer can address "
            "(unnamed nodes in the model file): give the model's nodes names, or leave those "
            "layers out of the rules"
        )
    return LayerPlan(tuple(layers), chosen)


def resolve(backend: Any, converted: Any, recipe: Any, source: Any = None) -> LayerPlan | None:
    """The recipe's rules resolved on ``backend``'s ``converted`` model (of ``source``, which
    names the layers), or None when it has none (no layer listing is needed then)."""
    rules = recipe.effective_rules()
    if not rules or recipe.precision == "fp32":  # fp32 quantizes nothing (Recipe.unused warns)
        return None
    allowed = backend.capabilities.layer_precisions.get(recipe.precision, ())
    return plan_layers(
        backend.layers(converted, source), rules, backend.name, allowed, recipe.precision
    )


def load_rules_file(path: str | Any) -> tuple[Rule, ...]:
    """Rules from a TOML file (``[[rules]]`` tables with ``pattern`` and ``precision``) or a
    JSON file (a list of such objects, or ``{"rules": [...]}``), in the order written."""
    import json
    import tomllib
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--rules {file}: no such file; give a .toml or .json rules file")
    if file.stat().st_size > 1 << 20:
        raise UsageError(f"--rules {file} is larger than 1 MiB; is it a rules file?")
    try:
        text = file.read_text(encoding="utf-8")
        data: Any = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if file.suffix == ".json" else "TOML"
        raise UsageError(f"--rules {file} is not valid {kind}: {exc}") from None
    if isinstance(data, Mapping):
        unknown = sorted(set(data) - {"rules"})
        if unknown or "rules" not in data:
            raise UsageError(
                f"--rules {file}: expected a 'rules' list of {{pattern, precision}} tables"
                + (f", found key(s) {unknown}" if unknown else "")
            )
        data = data["rules"]
    return parse_rules(data, f"--rules {file.name}")
