# feedbench — `make bench` and `make test` build .venv/ on first use (scripts/bootstrap.sh),
# and rebuild/update it only when pyproject.toml or the bootstrap script change.
#
#   make venv                 create/update .venv (incl. the Pillow -> pillow-simd swap)
#   make test [ARGS="-k x"]   run pytest in .venv
#   make bench [ARGS=...]     run the DALI feed benchmark
#   make clean-venv           delete .venv
#
# PYTHON=python3.11 picks the interpreter the venv is created from.

SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
STAMP   := $(VENV)/.feedbench-stamp
ARGS    ?=
# set to 1 to treat pytest's exit code 5 ("no tests collected") as success
ALLOW_NO_TESTS ?=

BENCH_ARGS ?= --pipeline dali --batch 64 --workers 8

export PYTHON

.DEFAULT_GOAL := help
.PHONY: help venv test bench clean-venv

help:
	@echo "targets: venv  test [ARGS=...]  bench [ARGS=...]  clean-venv"

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	@touch $@

test: $(STAMP)
	@rc=0; $(VENV)/bin/python -m pytest $(ARGS) || rc=$$?; \
	if [[ $$rc -eq 5 && -n "$(ALLOW_NO_TESTS)" ]]; then \
	    echo "make test: pytest collected no tests (exit 5); allowed by ALLOW_NO_TESTS" >&2; rc=0; \
	fi; \
	exit $$rc

bench: $(STAMP)
	$(VENV)/bin/feedbench $(BENCH_ARGS) $(ARGS)

clean-venv:
	rm -rf $(VENV)
