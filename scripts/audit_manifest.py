"""Snakemake wrapper: results/audit/manifest.json from every job's provenance record."""

from pathlib import Path

from geolocsft.audit import build_manifest
from geolocsft.io import atomic_write_json
from geolocsft.workflow import run_script


def main(smk) -> None:
    atomic_write_json(Path(smk.output[0]), build_manifest([Path(p) for p in smk.input]))


run_script(snakemake, main)
