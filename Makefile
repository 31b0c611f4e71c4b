# Set-up and the two everyday commands. `make demo` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch that lies on this machine's disk; on a CUDA machine run `make TORCH= demo` to keep yours.
TORCH ?= torch==2.13.0
STORE ?= store
DATA_ROOT ?=
PYTEST_ARGS ?=
ARCH ?= mlp

.PHONY: demo test install clean-store

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH),$(BIN)/pip install --quiet "$(TORCH)")
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

## Extract EmoDB with the embedded Whisper base (clean + 3 SNR bands), rank layers, cluster frames, train per fold, evaluate.
demo: $(BIN)/.installed
	$(BIN)/python jobs/pipeline.py --corpus emodb --model whisper-base --store $(STORE) --arch $(ARCH) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

## The test suite (what .ci/run calls).
test: $(BIN)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-store:
	rm -rf $(STORE)
