"""Typed settings from the config, with the config schema as the one source of defaults.

``config.schema.yaml`` (in this package; ``config/schema/config.schema.yaml`` links to it) gives
every key its type, its limits and its default. Snakemake validates the workflow's config against
it; everything else (the command line, tests, library use) builds settings through
:func:`from_config`, which fills the same defaults from the same file. The settings dataclasses
therefore hold no defaults of their own:

* a dataclass is a settings class when it has ``CONFIG_SECTION``, the schema path of the config
  block it is made from (``"ingest"``, ``"sft.runs.*"``, ``"sft.runs.*.predict"``, ...);
* each of its fields is the key of the same name in that block, or the dotted path in the
  field's ``metadata["key"]`` (``"gemini.batch_poll_s"``); a field with ``metadata["key"] =
  None`` is not a config key (a run's name, an instruction's text) and is passed by the caller;
* ``tests/test_settings.py`` fails when a field has no schema entry, when a schema key is held
  by no settings class and is not listed in :data:`KEYS_READ_BY_THE_WORKFLOW`, or when a field
  has a default.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any, TypeVar

import yaml

from geolocsft.errors import GeolocsftError

SCHEMA_FILE = "config.schema.yaml"
T = TypeVar("T")

#: Schema keys that no settings class holds because the workflow (rules/*.smk, the stage glue)
#: reads them directly, or that are sub-blocks held by a class of their own section.
KEYS_READ_BY_THE_WORKFLOW: dict[str, frozenset[str]] = {
    "captions": frozenset(
        {"backend", "model", "prompt_version", "splits", "store", "timeout_s", "gemini", "openai"}
    ),
    "sft.runs.*": frozenset(
        {
            "revision",
            "retrain_when_dataset_changes",
            "evaluate_on",
            "predict",
            "on_truncation",
            "slurm",
        }
    ),
    "sft.runs.*.predict": frozenset({"backend", "vllm"}),
    "sft.datasets.*": frozenset({"instruction"}),
    "acquire": frozenset({"cache", "datasets"}),
    "acquire.datasets.*": frozenset(
        {"repo_id", "repo_type", "revision", "allow_patterns", "ignore_patterns"}
    ),
}


@functools.cache
def schema() -> dict[str, Any]:
    """The config schema (parsed once)."""
    text = resources.files("geolocsft").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    # libyaml's loader when PyYAML has it: every job reads the schema (50 ms -> 6 ms)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loaded: dict[str, Any] = yaml.load(text, Loader=loader)  # a safe loader either way
    return loaded


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` (``#/definitions/...``) followed."""
    while "$ref" in node:
        target: Any = schema()
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def section_schema(section: str) -> dict[str, Any]:
    """The schema of a config block: ``"ingest"``, ``"sft.runs.*"`` (``*``: any name)."""
    node = _resolve(schema())
    for part in section.split("."):
        node = _resolve(node["additionalProperties"] if part == "*" else node["properties"][part])
    return node


def section_keys(section: str) -> dict[str, dict[str, Any]]:
    """The keys of a config block and their schemas."""
    return {key: _resolve(value) for key, value in section_schema(section)["properties"].items()}


def with_defaults(
    section: str | None,
    values: Mapping[str, Any],
    where: str | None = None,
    required: bool = True,
) -> dict[str, Any]:
    """``values`` (a block of ``section``; None: the whole config) completed with the schema's
    defaults, nested blocks and named entries (``sft.runs.<name>``) too; unknown keys and
    (unless ``required`` is false) missing required keys raise :class:`GeolocsftError`."""
    node = section_schema(section) if section else _resolve(schema())
    return _fill(node, dict(values), where or section or "config", required)


def _fill(
    node: dict[str, Any], values: dict[str, Any], where: str, required: bool
) -> dict[str, Any]:
    properties = {k: _resolve(v) for k, v in node.get("properties", {}).items()}
    if node.get("additionalProperties") is False:
        unknown = sorted(set(values) - set(properties))
        if unknown:
            raise GeolocsftError(
                f"{where}: unknown setting(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(properties))})"
            )
    missing = [k for k in node.get("required", []) if k not in values]
    if missing and required:
        raise GeolocsftError(f"{where}: required setting(s) missing: {', '.join(missing)}")
    filled = dict(values)
    for key, sub in properties.items():
        if key not in filled and "default" in sub:
            filled[key] = copy.deepcopy(sub["default"])
        if isinstance(filled.get(key), dict) and sub.get("type") == "object":
            filled[key] = _fill(sub, filled[key], f"{where}.{key}", required)
    entry = node.get("additionalProperties")
    if isinstance(entry, dict):
        entry = _resolve(entry)
        if entry.get("type") == "object":
            for key in set(filled) - set(properties):
                if isinstance(filled[key], dict):
                    filled[key] = _fill(entry, filled[key], f"{where}.{key}", required)
    return filled


def canonical(section: str | None, value: Any) -> Any:
    """``value`` (a config block of ``section``; None: the whole config) in one canonical form:
    mappings with sorted keys, and a whole number where the schema says ``number`` as a float
    (``120`` and ``120.0``). Rules pass config blocks as params in this form, so the same
    configuration in another key order, or written in YAML or with ``--config``, is the same
    param to Snakemake (which compares params by their ``repr``)."""
    node = _resolve(section_schema(section)) if section else _resolve(schema())
    return _canonical(node, value)


def _canonical(node: dict[str, Any], value: Any) -> Any:
    if isinstance(value, Mapping):
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        result = {}
        for key in sorted(value, key=str):
            sub = properties.get(key, extra if isinstance(extra, dict) else {})
            result[key] = _canonical(_resolve(sub) if sub else {}, value[key])
        return result
    if isinstance(value, list | tuple):
        items = node.get("items")
        return [_canonical(_resolve(items) if isinstance(items, dict) else {}, v) for v in value]
    types = node.get("type")
    types = types if isinstance(types, list) else [types]
    if isinstance(value, str) and "string" not in types:
        value = _from_text(value, types)
    if "number" in types and "integer" not in types and type(value) is int:
        return float(value)
    return value


def _from_text(text: str, types: list[Any]) -> Any:
    """A scalar given as text where the schema wants another type: ``--config`` passes nested
    values as text (``--config captions='{concurrency: 32}'`` gives ``"32"``)."""
    lowered = text.strip().lower()
    if "null" in types and lowered in ("null", "~", "none", ""):
        return None
    if "boolean" in types and lowered in ("true", "false"):
        return lowered == "true"
    for kind, parse in (("integer", int), ("number", float)):
        if kind in types:
            try:
                return parse(text)
            except ValueError:
                continue
    return text


def config_key(field: dataclasses.Field[Any]) -> str | None:
    """The config key (dotted path in its block) a settings field is read from, or None."""
    return field.metadata.get("key", field.name) if field.metadata else field.name


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def from_config(
    cls: type[T],
    values: Mapping[str, Any],
    where: str | None = None,
    required: bool = True,
    **given: Any,
) -> T:
    """A settings dataclass from its config block (schema defaults filled in).

    ``given`` holds the fields that are not config keys (``metadata={"key": None}``).
    """
    section: str = cls.CONFIG_SECTION  # type: ignore[attr-defined]
    filled = with_defaults(section, values, where, required)
    kwargs = dict(given)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = config_key(field)
        if key is None:
            continue
        try:
            kwargs[field.name] = _lookup(filled, key)
        except KeyError:
            raise GeolocsftError(
                f"{where or section}: setting {key} has no value and no default in the schema"
            ) from None
    return cls(**kwargs)


def configured(cls: type[T], **values: Any) -> T:
    """A settings dataclass from keyword arguments named like its fields: the config keys among
    them get the schema's defaults for what is left out; the other fields must be given."""
    config: dict[str, Any] = {}
    given: dict[str, Any] = {}
    keys = {f.name: config_key(f) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name, value in values.items():
        key = keys.get(name, name)
        if key is None:
            given[name] = value
            continue
        node = config
        *parents, last = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return from_config(cls, config, required=False, **given)


def settings_classes() -> Iterator[type[Any]]:
    """Every settings class of the package (all modules imported)."""
    import importlib
    import pkgutil

    import geolocsft

    for info in pkgutil.walk_packages(geolocsft.__path__, "geolocsft."):
        if info.name.startswith("geolocsft.testing"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
                and "CONFIG_SECTION" in vars(value)
            ):
                yield value
