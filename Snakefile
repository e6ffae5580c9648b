# geolocsft: geotagged photos -> manifest -> (geo-captions -> SFT dataset -> LoRA) -> predictions
# -> accuracy tables. Each stage is one rules/<stage>.smk; all logic lives in src/geolocsft/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/acquire.smk"
include: "rules/ingest.smk"
include: "rules/leakage.smk"
include: "rules/geocaption.smk"
include: "rules/sft.smk"
include: "rules/baselines.smk"
include: "rules/zeroshot.smk"
include: "rules/evaluate.smk"
include: "rules/audit.smk"


rule all:
    default_target: True
    input:
        all_targets(),


# Snakemake's job-rate limiter leaves a one-second timer that the process would wait for after
# the last job (geolocsft.workflow.cancel_pending_timers): nothing is left for it to wake.
onsuccess:
    cancel_pending_timers()


onerror:
    cancel_pending_timers()
