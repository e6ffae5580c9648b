"""Snakemake wrapper: results/audit/manifest.json from every job's provenance record."""

from pathlib import Path

from geolocsft.audit import FileHashes, build_manifest
from geolocsft.io import atomic_write_json
from geolocsft.workflow import run_script


def main(smk) -> None:
    hashes = FileHashes.in_memo(Path(smk.config["memo"]["dir"]))
    manifest = build_manifest([Path(p) for p in smk.input], hashes)
    hashes.save()
    atomic_write_json(Path(smk.output[0]), manifest)


run_script(snakemake, main)
