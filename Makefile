# The two set-up commands of README.md: `make demo` and `make test`. Both create .venv/ and
# install the project with the pinned versions of constraints.txt first (once; again only when
# pyproject.toml or constraints.txt change).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format clean-results

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 (Debian/Ubuntu: apt-get install python3.11 python3.11-venv) or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# DS_BUILD_OPS=0: DeepSpeed compiles its ops when first used, not at install time.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	@touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES) --printshellcmds
	@echo
	@echo "Demo finished. Results:"
	@echo "  accuracy table (all predictors):  results/eval/summary.md  (and summary.csv)"
	@echo "  per predictor / eval set:         results/eval/<predictor>/<evalset>/  (accuracy.*, plots)"
	@echo "  manifest:                         results/manifest.parquet  (rejected rows: results/ingest/rejected.csv)"
	@echo "  geo-captions:                     results/geocaptions/<captioner>/<prompt-version>/"
	@echo "  fine-tuning dataset, runs:        results/sft/<dataset>/, results/train/<run>/ (adapter, loss.png)"
	@echo "  predictions:                      results/predictions/<predictor>/<evalset>.csv"
	@echo "  provenance, audit manifest:       results/audit/  (check drift: $(BIN)/geolocsft audit)"
	@echo "  HTML report:                      $(BIN)/snakemake --report report.html"
	@echo
	@cat results/eval/summary.md

# pytest exits 5 when it collects no test: that is a failure here, never a silent pass.
test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/snakefmt Snakefile rules
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean-results:
	rm -rf results logs .snakemake
