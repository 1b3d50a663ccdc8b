# `make demo` and `make test` each set up everything on a fresh machine first:
# a virtual environment with pinned packages, and espeak-ng, sox and chromium (with its
# driver, for the review page's browser test) from Debian.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint system-packages clean

$(INSTALLED): requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

system-packages:
	@if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null \
		|| ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO apt-get install -y -qq espeak-ng sox chromium chromium-driver; \
	fi

demo: $(INSTALLED) system-packages
	$(PYTHON) train.py hparams/demo_tiny_en.yaml

lint: $(INSTALLED)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: $(INSTALLED) system-packages lint
	$(PYTHON) -m pytest -q

clean:
	rm -rf $(VENV) results data
