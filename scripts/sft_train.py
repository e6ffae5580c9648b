"""Snakemake wrapper: one LLaMA-Factory training run (see geolocsft.sft.train)."""

import shutil
from pathlib import Path

from geolocsft.sft.train import RunSettings, loss_history, plot_loss, train
from geolocsft.workflow import run_script


def main(smk) -> None:
    run = RunSettings.from_config(smk.wildcards.run, smk.params.settings)
    run_dir = Path(smk.params.run_dir)
    adapter = train(
        run,
        model_path=Path(smk.input.model).resolve(),
        dataset_dir=Path(smk.input.dataset[0]).parent.resolve(),
        run_dir=run_dir.resolve(),
        deepspeed_dir=Path(smk.input.deepspeed).resolve(),
        log_path=Path(smk.log[0]).resolve(),
    )
    shutil.copy2(adapter / "trainer_state.json", smk.output.state)
    plot_loss(loss_history(Path(smk.output.state)), Path(smk.output.loss), f"run {run.name}")


run_script(snakemake, main)
