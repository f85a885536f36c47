# Two commands: `make run` starts the whole system locally, `make test` runs every test.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian's python3: Exim's pipe transport runs as Debian-exim and needs an interpreter it can read.
BASE_PYTHON := /usr/bin/python3

.PHONY: run test bench system-deps venv clean

system-deps:
	bash scripts/install-system-deps.sh

$(VENV)/.installed: requirements.txt requirements-agent.txt requirements-dev.txt requirements-ansible.txt scripts/ansible-collections.sh
	test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -r requirements-ansible.txt
	bash scripts/ansible-collections.sh
	touch $@

venv: $(VENV)/.installed

run: system-deps venv
	$(PY) -m devserver.run_local

test: system-deps venv
	$(PY) -m pytest -q --durations=60 --durations-min=5 tests

bench: system-deps venv
	$(PY) bench/render.py
	$(PY) bench/e2e.py
	$(PY) bench/import.py
	$(PY) bench/api_bulk.py
	$(PY) bench/resolve.py
	$(PY) bench/pages.py
	$(PY) bench/suppressions.py
	$(PY) bench/clicks.py
	$(PY) bench/fuzz.py
	$(PY) bench/chaos.py
	$(PY) bench/shaping.py
	$(PY) bench/fleet.py

clean:
	rm -rf $(VENV) instance .pytest_cache
