"""A small JSON Schema checker for edgekit's own documents (sidecar, benchmark result).

It covers the subset of JSON Schema (draft 2020-12) those schemas use: ``type``, ``const``,
``enum``, ``required``, ``properties``, ``items``, ``minimum``. The ``jsonschema`` package is not
a dependency; the schemas stay standard, so any full validator accepts them too.
"""

from __future__ import annotations

from typing import Any

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "null": type(None),
}


def validate(doc: Any, schema: dict[str, Any] | None = None, where: str = "$") -> list[str]:
    """Problems with ``doc`` under ``schema`` (default: the benchmark result's); an empty list
    when it conforms."""
    if schema is None:
        from edgekit.bench.schema import JSON_SCHEMA

        schema = JSON_SCHEMA
    problems: list[str] = []
    if "const" in schema and doc != schema["const"]:
        problems.append(f"{where}: expected {schema['const']!r}, got {doc!r}")
    if "enum" in schema and doc not in schema["enum"]:
        problems.append(f"{where}: {doc!r} not one of {schema['enum']}")
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(doc, _TYPES[k])
            and not (k in ("integer", "number") and isinstance(doc, bool))
            for k in kinds
        )
        if not ok:
            return [*problems, f"{where}: expected {'/'.join(kinds)}, got {type(doc).__name__}"]
    if "minimum" in schema and isinstance(doc, int | float) and doc < schema["minimum"]:
        problems.append(f"{where}: {doc!r} is below {schema['minimum']}")
    if isinstance(doc, dict):
        problems += [f"{where}: missing '{k}'" for k in schema.get("required", []) if k not in doc]
        for key, sub in schema.get("properties", {}).items():
            if key in doc:
                problems += validate(doc[key], sub, f"{where}.{key}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            problems += validate(item, schema["items"], f"{where}[{i}]")
    return problems
