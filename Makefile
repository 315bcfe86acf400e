# The two commands of the quickstart: `make run` and `make test`. Each creates .venv on first
# use and installs what it needs, so a fresh clone needs no manual step.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= Qwen/Qwen3-VL-2B-Instruct
HOST ?= 127.0.0.1
PORT ?= 8000
# pip takes these two from local disk on the development machines; other combinations of torch
# and torchvision fail to import together there (see ARCHITECTURE.md). Override on other hosts.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# TORCH_INDEX: the wheel index torch and torchvision are installed from when .venv is made, e.g.
# https://download.pytorch.org/whl/cu128. Left unset, pip uses its own indexes (PyPI's Linux
# torch wheels bring gigabytes of CUDA libraries), except that `make run` on a machine without an
# NVIDIA GPU (no nvidia-smi on PATH) takes PyTorch's CPU wheels instead. Set it empty
# (`make run TORCH_INDEX=`) to keep pip's indexes, e.g. a local mirror in pip's config.
CPU_TORCH_INDEX := https://download.pytorch.org/whl/cpu
ifeq ($(origin TORCH_INDEX),undefined)
# Target-specific, so the prerequisites of `run` see it and those of `test` do not: the test
# target installs exactly as it always has.
run: TORCH_INDEX = $(if $(shell command -v nvidia-smi 2>/dev/null),,$(CPU_TORCH_INDEX))
endif
# $(strip) so that without an index the command is the same text as it always was.
PIP_TORCH = $(strip $(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_PINS))

.PHONY: run test lint typecheck unit clean redis-server postgresql

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(PIP_TORCH)
	$(PIP) -e . $(TORCH_PINS)
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(PIP) -e '.[test]' $(TORCH_PINS)
	touch $@

run: $(VENV)/.runtime
	$(BIN)/vlm-gateway serve --model $(MODEL) --host $(HOST) --port $(PORT)

lint: $(VENV)/.test
	$(BIN)/ruff check gateway adapters tests bench
	$(BIN)/ruff format --check gateway adapters tests bench

typecheck: $(VENV)/.test
	$(BIN)/mypy

# tests/integration/test_ratelimit_redis.py runs a real redis-server, so CI must not skip it:
# install Debian's when it is missing and apt-get is there (CI runs as root on Debian). The
# package lists are fetched only when the install fails without them. Without apt-get or root
# the test skips and says why.
redis-server:
	@if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "redis-server missing (as root: apt-get install redis-server): the Redis tests skip"; \
		else \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq redis-server >/dev/null 2>&1 || \
				{ apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }; \
		fi; \
	fi

# The file store's PostgreSQL tests (tests/unit/files, via tests/postgres.py) start their own
# throwaway server from Debian's binaries, which live under /usr/lib/postgresql/<version>/bin,
# off the PATH. Same policy as redis-server: install them when missing and we can; nothing is
# started here (the package's own cluster is not used). Otherwise those tests skip.
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && \
		! command -v initdb >/dev/null 2>&1; then \
		if ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ]; then \
			echo "PostgreSQL missing (as root: apt-get install postgresql): the PostgreSQL tests skip"; \
		else \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq postgresql >/dev/null 2>&1 || \
				{ apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }; \
		fi; \
	fi

test: lint typecheck redis-server postgresql
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
