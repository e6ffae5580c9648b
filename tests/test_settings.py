"""One source of defaults: every settings field is a schema key with its default there, and
every schema key is held by a settings class or read by the workflow itself."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from conftest import REPO

from geolocsft.errors import GeolocsftError
from geolocsft.ingest import IngestSettings
from geolocsft.settings import (
    KEYS_READ_BY_THE_WORKFLOW,
    config_key,
    configured,
    from_config,
    section_keys,
    settings_classes,
    with_defaults,
)
from geolocsft.sft.train import RunSettings

CLASSES = sorted(settings_classes(), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _schema_entry(section: str, dotted: str) -> dict:
    keys = section_keys(section)
    head, _, rest = dotted.partition(".")
    assert head in keys, f"{section}: no schema entry {head!r}"
    return _schema_entry(f"{section}.{head}", rest) if rest else keys[head]


def test_the_package_has_settings_classes():
    names = {c.__name__ for c in CLASSES}
    assert {"IngestSettings", "RunSettings", "PredictSettings", "EvaluationSettings"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_settings_field_is_a_schema_key_with_a_default_and_none_in_the_class(cls):
    section = cls.CONFIG_SECTION
    for field in dataclasses.fields(cls):
        key = config_key(field)
        if key is None:
            continue  # not a config key: given by the caller (a run's name, ...)
        entry = _schema_entry(section, key)
        required = key in _required(section)
        assert "default" in entry or required, f"{section}.{key} has no default in the schema"
        assert field.default is dataclasses.MISSING, f"{cls.__name__}.{field.name} has a default"
        assert field.default_factory is dataclasses.MISSING, f"{cls.__name__}.{field.name}"


def _required(section: str) -> set[str]:
    from geolocsft.settings import section_schema

    return set(section_schema(section).get("required", []))


def test_every_schema_key_of_a_settings_section_is_held_or_read_by_the_workflow():
    held: dict[str, set[str]] = {}
    for cls in CLASSES:
        for field in dataclasses.fields(cls):
            key = config_key(field)
            if key is not None:
                held.setdefault(cls.CONFIG_SECTION, set()).add(key.split(".")[0])
    for section, keys in held.items():
        unheld = set(section_keys(section)) - keys - KEYS_READ_BY_THE_WORKFLOW.get(section, set())
        assert not unheld, f"{section}: keys held by no settings class: {sorted(unheld)}"


def test_defaults_come_from_the_schema_and_unknown_keys_are_named():
    settings = configured(IngestSettings)
    assert settings.on_bad_input == "quarantine" and settings.max_image_pixels == 89478485
    assert from_config(IngestSettings, {"test_fraction": 0.5}).test_fraction == 0.5
    with pytest.raises(GeolocsftError, match=r"ingest: unknown setting\(s\) tset_fraction"):
        from_config(IngestSettings, {"tset_fraction": 0.5})
    with pytest.raises(GeolocsftError, match=r"sft.runs.r: required setting\(s\) missing: dataset"):
        RunSettings.from_config("r", {})
    run = with_defaults("sft.runs.*", {"dataset": "d"})
    assert run["predict"]["vllm"]["batch_size"] == 64  # nested blocks get their defaults too


def test_scripts_hold_no_defaults_of_their_own():
    """A script reads validated settings; `.get(key, default)` would be a second default."""
    offenders = []
    for script in sorted((REPO / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and len(node.args) == 2
            ):
                offenders.append(f"{script.name}:{node.lineno}")
    assert not offenders, offenders


def test_config_schema_in_config_folder_is_the_package_schema():
    linked = REPO / "config" / "schema" / "config.schema.yaml"
    assert linked.resolve() == (REPO / "src" / "geolocsft" / "config.schema.yaml").resolve()
    assert Path(linked).read_text() == (REPO / "src/geolocsft/config.schema.yaml").read_text()


def test_config_values_given_as_text_on_the_command_line_are_typed_by_the_schema():
    """`--config captions='{concurrency: 32}'` reaches the workflow as the text "32"."""
    from geolocsft.settings import canonical

    given = {"captions": {"concurrency": "32", "timeout_s": "120", "requests_per_minute": "null"}}
    assert canonical(None, given) == {
        "captions": {"concurrency": 32, "requests_per_minute": None, "timeout_s": 120.0}
    }
    assert canonical(None, {"captions": {"model": "123"}}) == {"captions": {"model": "123"}}
    reordered = {"evaluate": {"seed": 1, "confidence": 0.9}}
    assert list(canonical(None, reordered)["evaluate"]) == ["confidence", "seed"]
