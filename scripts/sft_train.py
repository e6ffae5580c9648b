"""Snakemake wrapper: one LLaMA-Factory training run (see geolocsft.sft.train)."""

import json
import shutil
from pathlib import Path

from geolocsft.sft.train import RunSettings, check_truncation, loss_history, plot_loss, train
from geolocsft.workflow import run_script


def main(smk) -> None:
    run = RunSettings.from_config(smk.wildcards.run, smk.params.settings)
    # Read when training starts, not a param: changing it never retrains a model.
    on_truncation = smk.config["sft"]["runs"][run.name]["on_truncation"]
    token_stats = json.loads(Path(smk.input.token_stats).read_text(encoding="utf-8"))
    check_truncation(token_stats, on_truncation, run.name)
    run_dir = Path(smk.params.run_dir)
    adapter = train(
        run,
        model_path=Path(smk.input.model).resolve(),
        dataset_dir=Path(smk.params.dataset_json).parent.resolve(),
        run_dir=run_dir.resolve(),
        deepspeed_dir=Path(smk.input.deepspeed).resolve(),
        code=smk.params.code,
        log_path=Path(smk.log[0]).resolve(),
        threads=smk.threads,
    )
    shutil.copy2(adapter / "trainer_state.json", smk.output.state)
    plot_loss(loss_history(Path(smk.output.state)), Path(smk.output.loss), f"run {run.name}")


run_script(snakemake, main)
