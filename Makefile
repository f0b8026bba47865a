# deflare developer commands. `make test` and `make demo` install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deflare-installed
# A CPU build on this project's machines. GPU users: create .venv and install your CUDA torch
# into it before `make install`; an importable torch is kept as it is.
TORCH_SPEC ?= torch==2.13.0
UNET_SPEC ?= pytorch3dunet==1.9.6
DEMO_DIR ?= runs/demo

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	# --no-deps: pytorch3dunet's metadata asks for torchvision, which it never imports.
	$(PY) -m pip install --quiet --no-deps "$(UNET_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

# For now: make an example recording, encode it to voxels, decode it back, summarise.
demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(PY) examples/make_example_events.py $(DEMO_DIR)/example.h5
	$(VENV)/bin/deflare encode $(DEMO_DIR)/example.h5 -o $(DEMO_DIR)/example.pt
	$(VENV)/bin/deflare decode $(DEMO_DIR)/example.pt -o $(DEMO_DIR)/decoded.h5
	$(PY) examples/encode_decode.py $(DEMO_DIR)/example.h5

bench: $(STAMP)
	$(PY) benchmarks/run.py --output BENCHMARKS.md

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
