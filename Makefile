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
$(STAMP): pyproject.toml
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

clean:
	rm -rf $(VENV) demo_out .pytest_cache

# make arm-check : the personalization on emulated ARM64 (qemu user mode + a Debian arm64 rootfs with
# the aarch64 numpy/onnxruntime wheels, built once into ~/.cache/zoodip/arm64-rootfs), compared with
# the same run on this host; also runs android_harness/run_on_device.sh against that rootfs. Needs root:
# it apt-installs qemu-user-static and debootstrap if missing and (re-)registers binfmt_misc.
# make arm-check ARM_RECIPE=w4a32 : the same with the 4-bit recipe's export.
ARM_RECIPE ?= w8a32
.PHONY: arm-check
arm-check: setup
	$(BIN)/python android_harness/arm_emulated.py check --recipe $(ARM_RECIPE)
