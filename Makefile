# Two commands do all set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: test demo lint docs world install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The built-in world's upstream set is Debian's Fashion-MNIST package.
world:
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)); \
	  else \
	    echo "cvlth: Fashion-MNIST is missing; install it with: sudo apt-get install dataset-fashion-mnist" >&2; \
	  fi; \
	fi

test: install world
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

demo: install world
	$(BIN)/cvlth demo

# The documentation site (mkdocs.yml, docs/) into site/; MkDocs is a dev dependency (the test suite
# builds the site too).
docs: install
	$(BIN)/python docs/gen_config_reference.py --check
	$(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs site
