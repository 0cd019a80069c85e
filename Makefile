# Common tasks; the scripts in scripts/ do the work and can be run directly.
# VENV defaults to $DYN_SEG_VENV, else the active virtualenv, else .venv.
VENV ?= $(or $(DYN_SEG_VENV),$(VIRTUAL_ENV),.venv)

.PHONY: install test demo lint

install:
	DYN_SEG_VENV=$(VENV) bash scripts/install.sh

test:
	DYN_SEG_VENV=$(VENV) bash scripts/run_tests.sh $(PYTEST_ARGS)

demo:
	DYN_SEG_VENV=$(VENV) bash scripts/run_main_job.sh

lint:
	$(VENV)/bin/ruff check .
