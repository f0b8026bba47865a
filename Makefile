# deflare developer commands. `make test` and `make demo` install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deflare-installed
# A CPU build on this project's machines. GPU users: create .venv and install your CUDA torch
# into it before `make install`; an importable torch is kept as it is.
TORCH_SPEC ?= torch==2.13.0
UNET_SPEC ?= pytorch3dunet==1.9.6
DEMO_DIR ?= runs/demo

.PHONY: install test lint demo bench realdata clean

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

DEFLARE := $(VENV)/bin/deflare
DEMO_TEST := $(DEMO_DIR)/data/test
DEFAULT_MODEL := deflare_cli/weights/default.pt

# The main job on built-in data, end to end on CPU in well under 10 minutes on 2 cores.
demo: $(STAMP)
	@echo "== 1/6 synthesising 8 training and 3 test pairs (640x480, 100 ms, mostly night and dusk)"
	$(DEFLARE) synth $(DEMO_DIR)/data/train --num-files 8 --seed 11 --workers 2 --overwrite
	$(DEFLARE) synth $(DEMO_TEST) --num-files 3 --seed 12 --workers 2 --overwrite
	@echo "== 2/6 training a small model for 2-3 minutes on CPU (a real one trains for hours)"
	$(DEFLARE) train --data-dir $(DEMO_DIR)/data/train --run-dir $(DEMO_DIR)/model \
		--max-steps 120 --epochs 1000 --batch-size 4 --crop 96x96 --lr 0.001 --val-fraction 0 \
		--overwrite
	@echo "== 3/6 deflaring the test inputs with it"
	$(DEFLARE) deflare $(DEMO_TEST)/background_with_flare_events $(DEMO_DIR)/deflared \
		--checkpoint $(DEMO_DIR)/model/last.pt --overwrite
	@echo "== 4/6 scoring every method against the clean targets"
	$(DEFLARE) evaluate --data-dir $(DEMO_TEST) --methods all --workers 2 \
		--checkpoint $(DEMO_DIR)/model/last.pt --efr-f0 120 --output $(DEMO_DIR)/report
	@echo "== 5/6 the default model shipped with deflare, on the same files"
	@if [ -f $(DEFAULT_MODEL) ]; then \
		$(DEFLARE) evaluate --data-dir $(DEMO_TEST) --methods raw,pfd-b,model \
			--output $(DEMO_DIR)/report_default; \
	else echo "no default model ships with this checkout: skipped"; fi
	@echo "== 6/6 pictures"
	$(DEFLARE) visualize --compare $(DEMO_TEST)/background_with_flare_events/composed_00000_bg_flare.h5 \
		$(DEMO_DIR)/deflared/composed_00000_bg_flare.h5 \
		$(DEMO_TEST)/background_with_light_events/composed_00000_bg_light.h5 \
		--windows 3 --gif -o $(DEMO_DIR)/pictures
	$(DEFLARE) visualize $(DEMO_TEST)/background_with_flare_events/composed_00000_bg_flare.h5 \
		-o $(DEMO_DIR)/pictures
	@echo "== done: reports in $(DEMO_DIR)/report*.json, pictures in $(DEMO_DIR)/pictures/"

bench: $(STAMP)
	$(PY) benchmarks/run.py --output BENCHMARKS.md

# Do-no-harm check of the default model on the real recordings in ../shared/realdata (issue 12).
realdata: $(STAMP)
	$(PY) benchmarks/realdata.py --output docs/realdata.md

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
