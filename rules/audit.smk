# The audit manifest: every artifact of the DAG with its sha256 and its job's provenance record.
# `geolocsft audit` re-hashes against it and reports drift.


localrules:
    audit_manifest,


rule audit_manifest:
    input:
        all_provenance(),
    output:
        "results/audit/manifest.json",
    log:
        "logs/audit/manifest.log",
    benchmark:
        "results/runtime/audit/manifest.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        code=code_of_script("audit_manifest"),
    message:
        "Audit manifest: the sha256 of every artifact and the provenance of every job"
    script:
        "../scripts/audit_manifest.py"
