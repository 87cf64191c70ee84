# Two commands do all the set-up on a fresh machine:
#   make serve   - install (first time) and run the Label Studio ML backend on :9090
#   make test    - install (first time) and run the whole test suite, end-to-end tests included (installs
#                  Debian's redis-server with apt-get when it is missing: the shared-session-store tests use it)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install serve test test-fast test-cvat test-docker lint format label-studio redis-server datumaro clean

$(STAMP): pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/adaptiveclick serve --port $${PORT:-9090}

label-studio:
	PYTHON=$(PYTHON) bash scripts/install_label_studio.sh

# Debian/Ubuntu's redis-server for the SESSION_STORE / RQ tests (as root, or with sudo); without it they skip
# locally and fail under CI=true.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq redis-server >/dev/null 2>&1 \
	    || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }; } \
	  || echo "could not install redis-server (apt-get install redis-server): the Redis tests will skip (fail under CI=true)"

test: $(STAMP) label-studio redis-server
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): the lint rules and the formatting; .ci/run runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: $(STAMP) redis-server
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

# Opt-in: PyPI datumaro (what CVAT's COCO import uses) in its own venv, for tests/test_export_datumaro.py; its
# numpy pin conflicts with ours, and most of its many requirements are not needed to read COCO.
DATUMARO_VENV := .cache/datumaro-venv
datumaro:
	[ -x $(DATUMARO_VENV)/bin/python ] || $(PYTHON) -m venv $(DATUMARO_VENV)
	$(DATUMARO_VENV)/bin/pip install -q --disable-pip-version-check --no-deps datumaro==1.11.1
	$(DATUMARO_VENV)/bin/pip install -q --disable-pip-version-check "numpy<2.2" attrs defusedxml imagesize \
	  orjson pillow ruamel.yaml pycocotools pyyaml json-stream shapely scipy networkx tqdm typing_extensions \
	  cryptography lxml tabulate portalocker opencv-python-headless pandas tensorboardX

# Opt-in, as root: the Dockerfile (both torch variants), `docker run`, the Label Studio and scale-out compose stacks and
# the CVAT function's build on a real Docker engine (Debian's docker.io, started when none runs, stopped afterwards),
# with local stand-ins for the images this machine cannot pull (tests/e2e/test_docker_real.py). First run 30-60 min
# (debootstrap, Label Studio, both images), then much less; figures go to .cache/docker/figures.json.
test-docker: $(STAMP)
	RUN_DOCKER=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra -m docker -x -s tests/e2e/test_docker_real.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache

# A real CVAT v2.73.0 (server + React UI, no Docker) driven against `adaptiveclick serve`; opt-in. It runs a CVAT
# installed under $CVAT_CACHE as ../shared/docs/cvat-real.md describes (src/, venv/: docs/cvat.md); no recipe that
# builds CVAT's code is kept here (the project commits nothing built from fetched code). CI replays the capture.
CVAT_CACHE ?= .cache/cvat
test-cvat: $(STAMP)
	@[ -x $(CVAT_CACHE)/venv/bin/python ] && [ -d $(CVAT_CACHE)/src/cvat ] || { echo "no CVAT install under \
	  $(CVAT_CACHE) (src/, venv/): set one up as ../shared/docs/cvat-real.md describes (docs/cvat.md)"; exit 2; }
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,docs]'
	CVAT_CACHE=$(CVAT_CACHE) bash scripts/cvat/services.sh start
	CVAT_CACHE=$(CVAT_CACHE) bash scripts/cvat/services.sh start-ui
	ADAPTIVECLICK_CVAT=1 CVAT_CACHE=$(CVAT_CACHE) HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra -m cvat_real \
	  tests/e2e/test_cvat_real_e2e.py $(PYTEST_ARGS)
