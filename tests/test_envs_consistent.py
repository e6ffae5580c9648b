"""envs/*.yaml, pyproject.toml extras, constraints.txt and config docs must not drift apart."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from conftest import REPO

# conda-forge names that differ from the PyPI names used in pyproject.toml.
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}
# Stage environments and the pyproject extra each one mirrors.
STAGES = {
    "ingest": "ingest",
    "captions": "captions",
    "baselines": "baselines",
    "evaluate": "evaluate",
    "train": "train",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(requirement: str, separator: str) -> tuple[str, str | None]:
    name, _, version = requirement.partition(separator)
    return normalise(CONDA_TO_PYPI.get(name.strip(), name.strip())), version.strip() or None


def env_packages(stage: str) -> dict[str, str | None]:
    env = yaml.safe_load((REPO / "envs" / f"{stage}.yaml").read_text())
    packages: dict[str, str | None] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for pip_dep in dep["pip"]:
                name, version = pinned(pip_dep, "==")
                packages[name] = version
        else:
            name, version = pinned(dep, "=")
            if name not in {"python", "pip"}:
                packages[name] = version
    return packages


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = pinned(line, "==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[name] = version
    return pins


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_env_lists_exactly_the_extra_and_base_packages(stage):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = {normalise(d) for d in project["dependencies"]} | {
        normalise(d) for d in project["optional-dependencies"][STAGES[stage]]
    }
    assert set(env_packages(stage)) == expected


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_env_versions_equal_the_constraints(stage):
    pins = constraints()
    for name, version in env_packages(stage).items():
        assert version == pins.get(name), f"envs/{stage}.yaml pins {name} {version}"


def test_every_dependency_is_pinned_in_constraints():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {normalise(d) for d in project["dependencies"]}
    for extra, deps in project["optional-dependencies"].items():
        if extra != "all":
            names |= {normalise(d) for d in deps}
    assert names <= set(constraints())


def test_every_env_is_used_by_a_rule_and_every_rule_env_exists():
    rules_text = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    used = set(re.findall(r'"\.\./envs/([\w-]+)\.yaml"', rules_text))
    present = {p.stem for p in (REPO / "envs").glob("*.yaml")}
    assert used == present


def _schema_keys(schema: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, sub in schema.get("properties", {}).items():
        keys.add(f"{prefix}{name}")
        keys |= _schema_keys(sub, f"{prefix}{name}.")
    return keys


def test_every_config_key_is_described_in_schema_and_readme():
    schema = yaml.safe_load((REPO / "config" / "schema" / "config.schema.yaml").read_text())
    readme = (REPO / "config" / "README.md").read_text()
    for key in _schema_keys(schema):
        parts = key.split(".")
        suffixes = {".".join(parts[i:]) for i in range(len(parts))}
        assert any(f"`{s}`" in readme for s in suffixes), f"{key} is not in config/README.md"


def test_every_leaf_config_key_has_a_description_and_default():
    schema = yaml.safe_load((REPO / "config" / "schema" / "config.schema.yaml").read_text())

    def walk(node: dict, path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if "properties" in sub:
                walk(sub, f"{path}{name}.")
            elif "$ref" not in sub:
                assert sub.get("description"), f"{path}{name} has no description"
                assert "default" in sub, f"{path}{name} has no default"

    walk(schema, "")
