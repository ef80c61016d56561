# make demo : set up a local virtual environment and run the demo on the built-in model
# make test : set up the same environment and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.zoodip-installed

.PHONY: setup demo test clean

# Everything is pinned in pyproject.toml (torch 2.13.0: from PyPI alone that is the CUDA build; its CPU build,
# 2.13.0+cpu, satisfies the pin where pip can find it, e.g. installed into .venv first).
# open-clip-torch is installed without dependencies: only its CLIP BPE vocabulary file is used.
# The check first: an older Python failed only at pip's resolution of onnxruntime==1.32.0, a half .venv left behind.
# The Makefile is a prerequisite too: an install step added to it is run in an existing .venv.
$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(None if sys.version_info >= (3, 11) else "error: make setup needs Python 3.11+ (the pinned onnxruntime has no wheels for Python %d.%d): run make setup PYTHON=python3.11 (or newer)" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[export,test]'
	$(BIN)/python -m pip install -q --no-deps open-clip-torch==3.3.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m reference.demo --out demo_out

test: setup
	$(BIN)/python -m pytest -q

# build/ too: setuptools reuses it, and a module since removed from sdk/ would go into the next wheel built here.
clean:
	rm -rf $(VENV) demo_out .pytest_cache build zoodip.egg-info

# make arm-check : the personalization on emulated ARM64 (qemu user mode + a Debian arm64 rootfs with
# the aarch64 numpy/onnxruntime wheels, built once into ~/.cache/zoodip/arm64-rootfs), compared with
# the same run on this host; also runs android_harness/run_on_device.sh against that rootfs. Needs root:
# it apt-installs qemu-user-static and debootstrap if missing and (re-)registers binfmt_misc.
# make arm-check ARM_RECIPE=w4a32 : the same with the 4-bit recipe's export.
ARM_RECIPE ?= w8a32
.PHONY: arm-check
arm-check: setup
	$(BIN)/python android_harness/arm_emulated.py check --recipe $(ARM_RECIPE)
