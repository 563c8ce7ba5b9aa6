"""Checks of an OpenAPI document: its shape, its references, and JSON values against its schemas
(the subset of JSON Schema the server's generator writes: ``$ref``, ``type``, ``enum``,
``properties``, ``required``, ``items``, ``additionalProperties``, ``anyOf``)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

REF = "#/components/schemas/"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def problems(
    value: Any, schema: Mapping[str, Any], doc: Mapping[str, Any], at: str = "$"
) -> list[str]:
    """Where ``value`` breaks ``schema`` (references resolved in ``doc``); empty when it fits."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF)
        return problems(value, doc["components"]["schemas"][name], doc, at)
    if "anyOf" in schema:
        tries = [problems(value, s, doc, at) for s in schema["anyOf"]]
        return [] if any(not t for t in tries) else [f"{at}: fits none of {schema['anyOf']}"]
    found: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        if not any(_is(value, k) for k in kinds):
            return [f"{at}: {value!r} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        found += [f"{at}: no {key!r}" for key in schema.get("required", []) if key not in value]
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                found += problems(item, props[key], doc, f"{at}.{key}")
            elif isinstance(extra, dict):
                found += problems(item, extra, doc, f"{at}.{key}")
            elif extra is False:
                found.append(f"{at}: unexpected {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += problems(item, schema["items"], doc, f"{at}[{i}]")
    return found


def answer_schema(doc: Mapping[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    """The JSON schema of the answer ``status`` of ``method path`` (a template path)."""
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered an undocumented {status}"
    schema: dict[str, Any] = responses[str(status)]["content"]["application/json"]["schema"]
    return schema


def shape_problems(doc: Mapping[str, Any]) -> list[str]:
    """What makes ``doc`` not an OpenAPI 3.x document of the form the generator promises."""
    found: list[str] = []
    if not str(doc.get("openapi", "")).startswith("3."):
        found.append(f"openapi is {doc.get('openapi')!r}")
    info = doc.get("info", {})
    found += [f"info has no {key}" for key in ("title", "version") if not info.get(key)]
    schemas = doc.get("components", {}).get("schemas", {})
    schemes = doc.get("components", {}).get("securitySchemes", {})
    for ref in refs(doc):
        if not ref.startswith(REF) or ref.removeprefix(REF) not in schemas:
            found.append(f"unresolved $ref {ref}")
    op_ids: list[str] = []
    for path, item in doc.get("paths", {}).items():
        if not path.startswith("/"):
            found.append(f"path {path!r} does not start with /")
        templated = set(re.findall(r"\{(\w+)\}", path))
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            if method not in METHODS:
                found.append(f"{where}: not an HTTP method")
                continue
            op_ids.append(op.get("operationId", ""))
            if not op.get("summary"):
                found.append(f"{where}: no summary")
            responses = op.get("responses") or {}
            if not responses:
                found.append(f"{where}: no responses")
            for status, answer in responses.items():
                if not (status == "default" or re.fullmatch(r"[1-5]\d\d", status)):
                    found.append(f"{where}: status {status!r}")
                if "description" not in answer:
                    found.append(f"{where} {status}: no description")
            params = op.get("parameters", [])
            for param in params:
                if param.get("in") not in ("query", "path", "header", "cookie"):
                    found.append(f"{where}: parameter {param.get('name')!r} in {param.get('in')!r}")
                if "schema" not in param:
                    found.append(f"{where}: parameter {param.get('name')!r} has no schema")
            declared = {p["name"] for p in params if p.get("in") == "path"}
            if declared != templated:
                found.append(f"{where}: path parameters {declared} for {templated}")
            body = op.get("requestBody")
            if body is not None and not body.get("content"):
                found.append(f"{where}: a request body without content")
            for requirement in op.get("security", []):
                found += [f"{where}: unknown scheme {s}" for s in requirement if s not in schemes]
    if len(set(op_ids)) != len(op_ids) or "" in op_ids:
        found.append(f"operationIds missing or repeated: {sorted(op_ids)}")
    return found
