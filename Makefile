# Two commands do all the set-up on a fresh machine:
#   make serve   - install (first time) and run the Label Studio ML backend on :9090
#   make test    - install (first time) and run the whole test suite, end-to-end tests included (installs
#                  Debian's redis-server with apt-get when it is missing: the shared-session-store tests use it)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install serve test test-fast test-docker lint format label-studio redis-server clean

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

# Opt-in, as root: the Dockerfile (both torch variants), `docker run`, the Label Studio and scale-out compose stacks and
# the CVAT function's build on a real Docker engine (Debian's docker.io, started when none runs, stopped afterwards),
# with local stand-ins for the images this machine cannot pull (tests/e2e/test_docker_real.py). First run 30-60 min
# (debootstrap, Label Studio, both images), then much less; figures go to .cache/docker/figures.json.
test-docker: $(STAMP)
	RUN_DOCKER=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra -m docker -x -s tests/e2e/test_docker_real.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache
