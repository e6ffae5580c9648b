"""Snakemake wrapper: build a tiny model of one family locally (tests and the CPU demo)."""

from pathlib import Path

from geolocsft.sft.tiny_gemma3 import build_tiny_gemma3
from geolocsft.sft.tiny_model import build_tiny_model
from geolocsft.workflow import run_script

BUILDERS = {"qwen2vl": build_tiny_model, "gemma3": build_tiny_gemma3}


def main(smk) -> None:
    BUILDERS[smk.wildcards.family](Path(smk.output.model), seed=smk.params.seed)


run_script(snakemake, main)
