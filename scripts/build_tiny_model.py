"""Snakemake wrapper: build the tiny Qwen2-VL-style model locally (tests and the CPU demo)."""

from pathlib import Path

from geolocsft.sft.tiny_model import build_tiny_model
from geolocsft.workflow import run_script


def main(smk) -> None:
    build_tiny_model(Path(smk.output.model), seed=smk.params.seed)


run_script(snakemake, main)
