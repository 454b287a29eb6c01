# Two entry points for a fresh machine (see README.md):
#   make run   install, then run the daemon on embedded defaults (default route's interface)
#   make test  install what the tests need (Debian packages too), then run the tests
# and: make replay (the bundled sample as a flow table with verdicts), make bench
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests drive for real: tshark (cross-checks), tcpdump (benchmark floor),
# prometheus + prometheus-alertmanager (end-to-end), tcpreplay, libpcap (BPF), iproute2 (netns),
# systemd (systemd-analyze checks the unit), chromium (renders the HTML evidence report),
# softflowd (exports captures as NetFlow/IPFIX to the collector)
DEB_PACKAGES := tshark tcpdump prometheus prometheus-alertmanager tcpreplay libpcap0.8 iproute2 \
	systemd chromium softflowd

.PHONY: run replay test install install-test deb-packages bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e .

install-test: $(BIN)/python deb-packages
	$(BIN)/python -m pip install -q -e '.[test]'

deb-packages:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
	    --no-install-recommends $$missing; \
	fi

run: install
	$(SUDO) $(BIN)/residency-monitor run

replay: install
	$(BIN)/residency-monitor replay --format table

test: install-test
	$(BIN)/python -m pytest -q

bench: install-test
	$(BIN)/python benchmarks/bench_replay.py --runs 3
	$(BIN)/python benchmarks/bench_residency.py --runs 3
	$(BIN)/python benchmarks/bench_live.py
	$(BIN)/python benchmarks/bench_alerts.py
	$(BIN)/python benchmarks/bench_audit.py --runs 3
	$(BIN)/python benchmarks/bench_attacks.py
	$(BIN)/python benchmarks/bench_collector.py
	$(BIN)/python benchmarks/bench_scale.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
