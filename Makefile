# Every routine thing has a target. `make test` and `make cluster` set everything up from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/csbs/v1/*.proto)
GEN_STAMP := csbs/v1/.generated
CONFIG ?= csbs/cluster.toml

.PHONY: install proto lint test cluster bench bench-scale demo clean soak soak-cluster browser

install: $(STAMP) $(GEN_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

proto: $(GEN_STAMP)

# Generated code lives in csbs/v1 (git-ignored) so that its own imports are right as emitted.
$(GEN_STAMP): $(PROTOS) $(STAMP)
	rm -rf csbs/v1 && mkdir -p csbs/v1
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --mypy_out=. \
		--mypy_grpc_out=. $(PROTOS)
	touch csbs/v1/__init__.py $(GEN_STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy csbs region_node coordinator console tests bench examples

test: install browser
	$(VENV)/bin/pytest -q

# The console's browser tests (tests/test_console.py) need Debian's Chromium, its driver and a CJK
# font (nothing else can be downloaded here); installed once, as root, skipped when present.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver -a -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium chromium-driver fonts-wqy-microhei; }

# TLS=1: TLS on every channel (a local CA and per-process certificates, made at first start).
TLS_FLAG := $(if $(filter 1 yes true,$(TLS)),--tls,)

cluster: install
	$(VENV)/bin/csbs-cluster --config $(CONFIG) $(TLS_FLAG)

bench: install
	$(PY) bench/backup.py
	$(PY) bench/replicate.py
	$(PY) bench/scale.py $(SCALE_ARGS)

# What each cost grows with (issue 12), about 10 minutes; SCALE_ARGS=--quick: about a minute.
bench-scale: install
	$(PY) bench/scale.py $(SCALE_ARGS)

# The whole story (README quickstart) against a fresh cluster of $(CONFIG)'s regions, on ephemeral
# ports with its data in a temp dir, started for the demo and stopped after it.
demo: install
	$(VENV)/bin/csbs --config $(CONFIG) demo --fresh-cluster $(TLS_FLAG)

# The seeded fault tests, each for SECONDS, as root (they mount tmpfs filesystems): a region
# node against a model (tests/node_soak.py: kill -9, a full disk, every backup restored and
# compared), then the whole cluster over DAYS simulated days a run, seed after seed
# (tests/cluster_soak.py: kills and pauses of every process, a full target region, a slow link,
# cut links, region outages and fault rules for simulated hours; every due
# run once, every job ended, replicas identical). A failure prints its seed; `make soak
# SEED=<seed> SECONDS=<s>` replays it. SEED defaults to a random one.
SEED ?= $(shell od -An -N3 -tu4 /dev/urandom | tr -d ' ')
SECONDS ?= 1800
DAYS ?= 10

soak: install
	$(PY) -m tests.node_soak --seed $(SEED) --seconds $(SECONDS)
	$(PY) -m tests.cluster_soak --seed $(SEED) --days $(DAYS) --seconds $(SECONDS)

soak-cluster: install
	$(PY) -m tests.cluster_soak --seed $(SEED) --days $(DAYS) --seconds $(SECONDS)

clean:
	rm -rf csbs/v1 $(VENV) var .pytest_cache .mypy_cache .ruff_cache
