# deepseek.cluster — the two commands a newcomer needs:
#   make lab    the full stack on local containers (primary + standby sites, monitoring)
#   make test   lint, unit tests, collection build/install, molecule for every role, lab integration
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/collections
export PY_COLORS := 1
export ANSIBLE_FORCE_COLOR := 1

.PHONY: help venv engine image lint unit sanity collection molecule molecule-extended \
        lab lab-down lab-test lab-test-extended lab-failover lab-failback lab-upgrade lab-rotate-certs lab-rotate-ca test test-extended bench clean distclean

help:
	@echo "make lab            build the lab (9 systemd containers) and run site.yml on it"
	@echo "make lab-down       remove the lab containers and network"
	@echo "make lab-failover   kill the lab's primary site, run failover.yml, infer through the service name (standby)"
	@echo "make lab-failback   start the primary site again, run failback.yml (resync, verify, switch back)"
	@echo "make lab-upgrade    rolling_upgrade.yml over the primary site under load; prints the failed requests (0 expected)"
	@echo "make lab-rotate-certs  rotate_certs.yml under load; prints the failed requests"
	@echo "make lab-rotate-ca  a CA rotation (trust, issue, finish) under load; prints the failed requests"
	@echo "make test           lint, unit, collection build+install, molecule (main scenarios), lab integration"
	@echo "make test-extended  make test plus the extended molecule scenarios and the lab's certificate and CA rotations"
	@echo "make distclean      remove the lab, test containers, base image, virtualenvs and caches: then make test or"
	@echo "                    make lab starts as on a fresh machine (make distclean test)"
	@echo "make bench          benchmarks (planning 1,000 hosts, molecule and site.yml over SSH vs docker exec, Triton direct,"
	@echo "                    monitoring detection time and the probe's cost, replication lag, a model version's way to the"
	@echo "                    standby and the RTO, the mTLS proxy's cost; leaves the lab up)"

# The test, lab and benchmark helpers (package deepseek_testkit) go in editable: new modules need no reinstall.
$(VENV)/.installed: requirements.txt tests/testkit/pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet -e tests/testkit
	touch $@

venv: $(VENV)/.installed

engine:
	molecule/scripts/ensure-docker.sh

image: engine
	molecule/scripts/build-base-image.sh

lint: venv
	yamllint --strict .
	ruff check .
	ruff format --check .
	ansible-lint --offline --profile production
	antsibull-changelog lint

unit: venv
	pytest -q tests/unit tests/integration

sanity: venv
	tests/sanity/run.sh

collection: venv image
	tests/collection/build-and-run.sh

molecule: venv image
	molecule/scripts/run-molecule.sh

molecule-extended: venv image
	molecule/scripts/run-molecule.sh --extended

lab: venv image
	$(VENV)/bin/python -m deepseek_testkit.lab up

lab-down: venv
	$(VENV)/bin/python -m deepseek_testkit.lab down

lab-test: venv image
	$(VENV)/bin/python -m deepseek_testkit.lab test

lab-failover: venv
	$(VENV)/bin/python -m deepseek_testkit.lab failover

lab-failback: venv
	$(VENV)/bin/python -m deepseek_testkit.lab failback

lab-upgrade: venv
	$(VENV)/bin/python -m deepseek_testkit.lab upgrade

lab-rotate-certs: venv
	$(VENV)/bin/python -m deepseek_testkit.lab rotate-certs

lab-rotate-ca: venv
	$(VENV)/bin/python -m deepseek_testkit.lab rotate-ca

test: lint unit sanity collection molecule lab-test

lab-test-extended: venv image
	$(VENV)/bin/python -m deepseek_testkit.lab test --extended

test-extended: lint unit sanity collection molecule-extended lab-test-extended

bench: venv image
	$(VENV)/bin/python benchmarks/plan_1000_hosts.py
	$(VENV)/bin/python benchmarks/molecule_connection.py
	$(VENV)/bin/python benchmarks/lab_playbook_time.py --keep
	$(VENV)/bin/python benchmarks/probe_detection.py
	$(VENV)/bin/python benchmarks/dr_lab.py
	$(VENV)/bin/python benchmarks/triton_lab_model.py
	$(VENV)/bin/python benchmarks/mtls_proxy_overhead.py

clean: lab-down
	rm -rf $(VENV) .venv-sanity .ruff_cache .pytest_cache

# Everything this project installed or cached, so that the next target starts from nothing.
distclean:
	molecule/scripts/distclean.sh
