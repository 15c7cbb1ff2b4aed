# Tools live in .venv, created by scripts/bootstrap.sh (`make install`).
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
LINT_PATHS := streamproc handlers bench tests

.PHONY: install lint typecheck test test-lowest demo bench bench-smoke clean

install:
	./scripts/bootstrap.sh

lint:
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

# mypy alone; its file list comes from [tool.mypy] files in pyproject.toml.
typecheck:
	$(BIN)/mypy

test: install
	$(MAKE) lint
	$(BIN)/pytest -q

# tests/unit and tests/integration in .venv-lowest, every runtime dependency at its floor (scripts/lowest.sh).
test-lowest:
	./scripts/lowest.sh

demo: install
	$(PY) -m handlers.demo

bench: install
	$(PY) -m bench

bench-smoke: install
	$(PY) -m bench --smoke

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache dist build .venv-lowest
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
