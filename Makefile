# Quick start:  make demo   (sets up .venv and runs the demo)
#               make test   (sets up .venv and runs ruff and the whole test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ORACLE := $(VENV)/.oracle

.PHONY: demo test test-pythons lint bench clean venv

# The dist extra (mpi4py and MPICH's wheel, for the data-parallel tests) is installed when it
# can be; without it those tests are skipped, with their reason.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,examples,dist]' || { \
		echo "the dist extra (mpi4py, mpich) could not be installed: the MPI tests will be skipped"; \
		$(PY) -m pip install --quiet -e '.[test,examples]'; }
	touch $(STAMP)

# PyTorch is only a test oracle: install a CPU build if one is available without
# downloading (a local wheel pip already knows about); otherwise those tests skip.
# (The first install must succeed offline; only then are its small dependencies fetched.)
$(ORACLE): $(STAMP)
	@if $(PY) -m pip install --quiet --no-index --no-deps 'torch==2.13.0' 2>/dev/null; then \
		$(PY) -m pip install --quiet 'torch==2.13.0' 2>/dev/null \
		&& echo "PyTorch found: oracle tests enabled" \
		|| { $(PY) -m pip uninstall --quiet -y torch; \
		     echo "PyTorch dependencies unavailable: oracle tests will be skipped"; }; \
	else echo "PyTorch not available offline: oracle tests will be skipped"; fi
	@touch $(ORACLE)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/train_mlp.py
	$(PY) -m benchmarks --quick

lint: $(STAMP)
	$(PY) -m ruff check dyngrad compiler tests examples benchmarks

# The whole suite runs on the default (LLVM) backend; the compiled tests then run again on
# the numpy interpreter, where compiled must equal eager bit for bit; and the LLVM tests run
# once more for an AVX2-only CPU (DYNGRAD_TARGET, emulated on this one), so the paths for
# machines without AVX-512 stay tested whatever CPU runs the suite.
COMPILED_TESTS := tests/test_compiler.py tests/test_footguns.py tests/test_soundness.py \
	tests/test_random_programs.py tests/test_footguns_sources.py tests/test_footguns_history.py \
	tests/test_random_sources.py tests/test_footguns_replay.py tests/test_first_call_fill.py \
	tests/test_first_call_fill_review.py
# (the AVX2 pass runs 4 of the 16 chunks of random programs, without the coverage check
# that would run the rest, and not test_compiler.py, whose kernels the codegen tests
# cover: they add time, not code paths)
AVX2_SHORT := (not random_programs_compiled_equal_eager_bit_for_bit and not \
	really_ran_compiled_and_covered) or seeds_0_ or seeds_100_ or seeds_200_ or seeds_300_
LLVM_TESTS := tests/test_llvm_*.py tests/test_vecmath.py tests/test_codegen*.py tests/test_window_lowering.py \
	tests/test_target.py tests/test_profile.py tests/test_footguns.py tests/test_soundness.py \
	tests/test_random_programs.py tests/test_flash_attention.py tests/test_conv_paths.py \
	tests/test_attention_views.py tests/test_pads_pass.py

# The capture (compiler/capture/) interprets CPython bytecode: its tests run again on every
# other CPython it understands that pyenv has on the machine (3.12, 3.13), each in a venv of
# its own (.venv-3.12, .venv-3.13), made on first use.
CAPTURE_TESTS := tests/test_capture.py tests/test_soundness.py tests/test_footguns.py \
	tests/test_footguns_sources.py tests/test_footguns_history.py tests/test_footguns_replay.py \
	tests/test_random_sources.py tests/test_footguns_replay.py tests/test_first_call_fill.py \
	tests/test_first_call_fill_review.py
OTHER_PYTHONS := $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3 \
	$(HOME)/.pyenv/versions/3.13*/bin/python3)

# Test processes at once (pytest-xdist): CI's machine has two cores. Results never depend
# on it; a test that measures threads asks the backend's own pool, not the core count.
# (--dist loadgroup: the tests of one xdist_group, the MPI programs', share one worker.)
JOBS ?= 2

test: lint $(ORACLE)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup
	DYNGRAD_BACKEND=interp $(PY) -m pytest -n $(JOBS) $(COMPILED_TESTS)
	DYNGRAD_TARGET=x86-64-v3 $(PY) -m pytest -n $(JOBS) $(LLVM_TESTS) -k "$(AVX2_SHORT)"
	$(MAKE) --no-print-directory test-pythons

test-pythons:
	@for py in $(OTHER_PYTHONS); do \
		v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
		env=.venv-$$v; \
		if [ ! -f $$env/.installed-xdist ]; then \
			{ $$py -m venv $$env && $$env/bin/python -m pip install --quiet --upgrade pip && \
			  $$env/bin/python -m pip install --quiet -e . pytest pytest-xdist && \
			  touch $$env/.installed-xdist; } \
			|| { echo "WARNING: could not set up $$env (no network?): the capture tests" \
			          "do not run on Python $$v"; continue; }; \
		fi; \
		echo "capture tests on Python $$v ($$py)"; \
		$$env/bin/python -m pytest -q -p no:cacheprovider -n $(JOBS) $(CAPTURE_TESTS) || exit 1; \
	done

bench: $(STAMP)
	$(PY) benchmarks/eager_overhead.py
	$(PY) -m benchmarks
	$(PY) benchmarks/symbolic_sizes.py

clean:
	rm -rf $(VENV) .venv-3.* build *.egg-info
