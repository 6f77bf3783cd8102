# make test: create .venv, install with test extras, the lint gate, then the whole suite (CI runs this).
# make lint: the lint gate alone: ruff format --check and ruff check (config in pyproject.toml), then mypy --strict
# on gateway/. `.venv/bin/ruff format` formats the tree as the gate wants it.
# make demo: create .venv, install, run `caiasoft-gateway demo --keep` (the demo folder stays to look at).
# make bench: the benchmarks (bench/run.py, bench/print_files.py): tables and JSON lines of figures.
# make wheelhouse: the offline installer in dist/caiasoft-gateway-VERSION/ (wheels, install, unit; docs/install.md).
# make install GROUP=... PRINT_FOLDER="DIR [DIR2 ...]" [WRITABLE_PATH="DIR ..."] [PYTHON=/usr/bin/python3.11]
#   [PREFIX=...] [DESTDIR=...] [WHEELHOUSE=DIR] [SYSV=yes]: tools/install (docs/install.md); from this tree it needs
#   the network unless WHEELHOUSE is given. DESTDIR is for tests and scratch roots only: the venv there names it
#   in its scripts and pyvenv.cfg, so it is no way to build an image or a package.
# make uninstall [PREFIX=...] [DESTDIR=...]: tools/install --uninstall.
# make man: the man pages the install writes, into build/: caiasoft-gateway.8 and gateway.toml.5 (man -l to read).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: test lint demo bench clean wheelhouse install uninstall man

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

test: $(VENV)/.installed
	tools/check-tracked
	$(MAKE) --no-print-directory lint
	tools/install-test-deps
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff format --check
	$(BIN)/ruff check
	$(BIN)/mypy

demo: $(VENV)/.installed
	$(BIN)/caiasoft-gateway demo --keep

bench: $(VENV)/.installed
	$(BIN)/python bench/run.py
	$(BIN)/python bench/print_files.py

OUT ?= dist
wheelhouse:
	tools/wheelhouse --python $(PYTHON) --out $(OUT)

PREFIX  ?= /opt/caiasoft-gateway
install:
	$(if $(strip $(GROUP)),,$(error GROUP is missing: make install GROUP=<the print folder's group> PRINT_FOLDER=<folder>))
	$(if $(strip $(PRINT_FOLDER)),,$(error PRINT_FOLDER is missing: make install GROUP=$(GROUP) PRINT_FOLDER=<folder>))
	tools/install --python $(PYTHON) --group $(GROUP) $(foreach folder,$(PRINT_FOLDER),--print-folder $(folder)) \
		$(foreach path,$(WRITABLE_PATH),--writable-path $(path)) --prefix $(PREFIX) \
		$(if $(DESTDIR),--root $(DESTDIR)) $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE)) $(if $(SYSV),--sysv)

uninstall:
	tools/install --uninstall --prefix $(PREFIX) $(if $(DESTDIR),--root $(DESTDIR))

man: $(VENV)/.installed
	mkdir -p build
	$(BIN)/python -m gateway.cli.manpage caiasoft-gateway > build/caiasoft-gateway.8
	$(BIN)/python -m gateway.cli.manpage gateway.toml > build/gateway.toml.5

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
