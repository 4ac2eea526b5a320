# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create the environment on first use; it lives outside the checkout so every clone (and CI)
# reuses it instead of downloading torch again.
SHELL := /bin/bash
VENV ?= $(HOME)/.cache/dtc/venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
APT_PACKAGES := libeigen3-dev libopencv-dev cmake g++ ninja-build ccache
# Rebuild quickly when only a few files changed (scikit-build-core keeps its build dir).
BUILD_STAMP := $(VENV)/.dtc-installed
JOBS ?= $(shell nproc)
# Let ccache (used by CMakeLists when installed) hit across clones in different folders.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := true
PYTEST_ARGS ?=

.PHONY: env install demo test dev bench clean-build

env: $(VENV)/.dtc-env

$(VENV)/.dtc-env: requirements.txt
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	@touch $@

# Build and install dtc into the environment (non-editable; incremental through build/).
install: env
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PIP) install -q --no-build-isolation --no-deps .
	@$(PY) -c "import dtc, json; print('dtc installed:', json.dumps(dtc.build_info()))"

demo: install
	$(VENV)/bin/dtc demo

# Tests run against the installed package, from outside the source tree, as a user would.
test: install
	cd tests && $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) .

# Developers: build dtc._C in place (python/dtc/_C*.so) for PYTHONPATH=python runs. A lock keeps
# parallel invocations from corrupting the shared build folder, and the library is replaced by a
# rename (a new inode), never overwritten in place under a process that has it mapped.
dev: env
	@mkdir -p build/dev
	flock build/dev/.lock bash -c '\
	  test -f build/dev/CMakeCache.txt || cmake -S . -B build/dev -G Ninja -DPython_EXECUTABLE=$(PY) -DCMAKE_BUILD_TYPE=Release; \
	  cmake --build build/dev -j $(JOBS) && for so in build/dev/_C*.so; do \
	    name=$$(basename $$so); cp -f $$so python/dtc/.$$name.tmp && mv -f python/dtc/.$$name.tmp python/dtc/$$name; done && \
	  if [ -x build/dev/dtc-stream ]; then mkdir -p python/dtc/bin && cp -f build/dev/dtc-stream python/dtc/bin/.dtc-stream.tmp \
	    && mv -f python/dtc/bin/.dtc-stream.tmp python/dtc/bin/dtc-stream; fi'

bench: install
	$(PY) -m dtc.bench warp

clean-build:
	rm -rf build python/dtc/_C*.so
