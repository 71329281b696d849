"""LLM judges through an OpenAI-compatible API: ``openai`` (any endpoint; the key comes from the environment
variable named in ``eval.judge.api_key_env`` and is never written anywhere) and ``vllm_local`` (an open judge
model that remax-bench serves on 127.0.0.1, then the ``openai`` judge against it; the server is always stopped).

Pairwise verdicts go through alpaca_eval's own annotator (``alpaca_eval_annotator``) or this project's short
comparison prompt in alpaca_eval's style (outputs named ``m`` and ``M``, in a random but fixed order against
position bias); single verdicts use FastChat's judge prompts (reference-guided for math, reasoning and coding)
and its ``[[rating]]`` parsing. A call that fails, or whose answer cannot be parsed, is retried
(``max_retries``); then the item is unjudged.
"""

from __future__ import annotations

import ast
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from remax_bench.evaluation.common import EvalConfigError, stable_hash
from remax_bench.evaluation.server import LOCAL_HOST, ManagedServer, vllm_serve_command
from remax_bench.evaluation.verdicts import (
    MODEL_WINS,
    REFERENCE_WINS,
    Judge,
    PairwiseItem,
    SingleItem,
    Verdict,
)

# -- LLM judges through an OpenAI-compatible API --------------------------------------------------
PAIRWISE_SYSTEM = (
    "You compare two answers to the same instruction and say which one serves the user better. "
    "You answer with one identifier and nothing else."
)
PAIRWISE_TEMPLATE = """Which output answers the instruction better? Judge correctness, helpfulness and completeness; \
do not reward length, style or the order in which the outputs appear.

## Instruction
{instruction}

## Output m
{output_m}

## Output M
{output_M}

Reply with exactly one identifier: m if Output m is better, M if Output M is better."""
PAIRWISE_PATTERN = re.compile(r"(?:[Oo]utput\s*)?\(?([mM])\)?")


def parse_pairwise(text: str) -> str | None:
    """'m' or 'M' from the judge's reply (case matters: the two outputs differ only in case), else None."""
    cleaned = text.strip().strip("`'\"*.:[] \n\t")
    match = PAIRWISE_PATTERN.fullmatch(cleaned)
    return match.group(1) if match else None


def _fastchat_patterns():
    """FastChat's [[rating]] pattern and its [rating] fallback (fastchat.llm_judge.common)."""
    try:
        from fastchat.llm_judge.common import one_score_pattern, one_score_pattern_backup

        return one_score_pattern, one_score_pattern_backup
    except ImportError:  # the same expressions, should fastchat's judge module fail to import
        return re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(text: str) -> float | None:
    """A 1-10 rating the way FastChat reads it (run_judge_single); None when absent or out of range."""
    primary, backup = _fastchat_patterns()
    match = re.search(primary, text) or re.search(backup, text)
    if not match:
        return None
    rating = float(ast.literal_eval(match.groups()[0]))
    return rating if 1.0 <= rating <= 10.0 else None


def single_prompt_name(item: SingleItem, has_reference: bool) -> str:
    """FastChat's choice (gen_judgment.make_judge_single): math prompt for reference-guided categories."""
    name = "single-math-v1" if has_reference else "single-v1"
    return name + ("-multi-turn" if item.turn == 2 else "")


def needs_reference(category: str) -> bool:
    try:
        from fastchat.llm_judge.common import NEED_REF_CATS
    except ImportError:
        NEED_REF_CATS = ["math", "reasoning", "coding", "arena-hard-200"]
    return category in NEED_REF_CATS


def render_single(prompts: dict[str, dict], item: SingleItem) -> tuple[list[dict], str, bool]:
    """(messages, prompt name, reference missing) as FastChat's run_judge_single builds them."""
    wants_ref = needs_reference(item.question.get("category", ""))
    has_ref = wants_ref and bool(item.reference) and len(item.reference) >= item.turn
    name = single_prompt_name(item, has_ref)
    template = prompts[name]
    q, a = item.question["turns"], item.answers
    kwargs = {}
    if has_ref:
        kwargs["ref_answer_1"] = item.reference[0]
        if item.turn == 2:
            kwargs["ref_answer_2"] = item.reference[1]
    if item.turn == 2:
        user = template["prompt_template"].format(question_1=q[0], question_2=q[1], answer_1=a[0], answer_2=a[1], **kwargs)
    else:
        user = template["prompt_template"].format(question=q[0], answer=a[0], **kwargs)
    messages = [{"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": user}]
    return messages, name, wants_ref and not has_ref


class OpenAIJudge(Judge):
    type = "openai"
    cacheable = True
    reads_references = True
    max_tokens_pairwise = 16
    max_tokens_single = 2048  # FastChat judges with temperature 0 and max_tokens 2048

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_retries: int = 3, timeout_s: float = 60.0,
                 judge_prompts: dict | Callable[[], dict] | None = None, workers: int = 8,
                 backoff_s: float = 2.0, max_backoff_s: float = 60.0, alpaca_annotator: str | None = None):
        if not model:
            raise EvalConfigError(f"eval.judge.model: a judge of type {self.type!r} needs the judge model's name")
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self._judge_prompts = judge_prompts
        self.workers = workers
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._client = None
        self._secret: str | None = None
        self._lock = threading.Lock()
        self.requests = 0
        # AlpacaEval through alpaca_eval's own annotator config (prompt, completion settings, parser), or None
        # for remax-bench's own pairwise prompt.
        self.alpaca_annotator = alpaca_annotator
        self._annotators = None
        self._client_config_dir = None

    # -- identity, prompts -------------------------------------------------------------------------
    def identity(self):
        identity = {"type": self.type, "model": self.model, "base_url": self.base_url or "https://api.openai.com/v1"}
        if self.alpaca_annotator:
            identity["alpaca_eval_annotator"] = self.alpaca_annotator
        return identity

    @property
    def request_model(self) -> str:
        return self.model

    def judge_prompts(self) -> dict:
        if callable(self._judge_prompts):
            self._judge_prompts = self._judge_prompts()
        if not self._judge_prompts:
            raise EvalConfigError("single-answer grading needs FastChat's judge prompts (eval.mt_bench.judge_prompts)")
        return self._judge_prompts

    @staticmethod
    def pairwise_messages(item: PairwiseItem) -> tuple[list[dict], bool]:
        """Messages and whether the model's output is shown first; the order is a fixed coin flip per item."""
        swapped = int(stable_hash([item.instruction, item.output_1, item.output_2]), 16) % 2 == 1
        first, second = (item.output_2, item.output_1) if swapped else (item.output_1, item.output_2)
        user = PAIRWISE_TEMPLATE.format(instruction=item.instruction, output_m=first, output_M=second)
        return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}], swapped

    def payload(self, kind, item):
        if kind == "pairwise":
            messages, swapped = self.pairwise_messages(item)
            return {"messages": messages, "swapped": swapped}
        messages, name, _ = render_single(self.judge_prompts(), item)
        return {"messages": messages, "prompt": name}

    # -- the API -----------------------------------------------------------------------------------
    def api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EvalConfigError(f"eval.judge: the environment variable {self.api_key_env} (named in "
                                  "eval.judge.api_key_env) is not set; export the judge's API key in it")
        return key

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                import openai

                self._secret = self.api_key()
                # Retries are ours (below), so that a failure is counted and an unparseable answer retried too.
                self._client = openai.OpenAI(base_url=self.base_url, api_key=self._secret, timeout=self.timeout_s,
                                             max_retries=0)
            return self._client

    def scrub(self, text: str | None) -> str | None:
        """Text with the key removed, should an error message or a server echo it."""
        if text and self._secret:
            text = text.replace(self._secret, "***")
        return text

    def ask(self, messages: list[dict], parse: Callable[[str], Any], max_tokens: int) -> tuple[Any, str | None, str | None, int]:
        """(parsed value or None, last reply, error, attempts): 1 + max_retries tries with exponential backoff."""
        client = self.client
        errors: list[str] = []
        text = None
        attempts = 0
        for attempt in range(1 + self.max_retries):
            if attempt:
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            attempts += 1
            with self._lock:
                self.requests += 1
            try:
                response = client.chat.completions.create(model=self.request_model, messages=messages, temperature=0,
                                                          max_tokens=max_tokens)
                text = response.choices[0].message.content or ""
            except Exception as err:  # noqa: BLE001 - any API failure is retried, then counted
                errors.append(self.scrub(f"{type(err).__name__}: {err}")[:300])
                continue
            value = parse(text)
            if value is not None:
                return value, self.scrub(text), None, attempts
            errors.append(f"unparseable verdict: {self.scrub(text)[:200]!r}")
        return None, self.scrub(text), " | ".join(errors[-3:]), attempts

    def _map(self, fn, items):
        if self.workers <= 1 or len(items) <= 1:
            return [fn(it) for it in items]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(fn, items))

    def pairwise(self, items):
        if self.alpaca_annotator:
            return self._alpaca_eval_pairwise(items)

        def one(item):
            messages, swapped = self.pairwise_messages(item)
            winner, text, error, attempts = self.ask(messages, parse_pairwise, self.max_tokens_pairwise)
            if winner is None:
                return Verdict(None, raw=text, error=error, attempts=attempts, extra={"swapped": swapped})
            model_first = swapped  # 'm' names the output shown first
            model_won = (winner == "m") == model_first
            return Verdict(MODEL_WINS if model_won else REFERENCE_WINS, raw=text, attempts=attempts,
                           extra={"swapped": swapped, "identifier": winner})

        return self._map(one, items)

    def close(self) -> None:
        if self._client_config_dir is not None:  # the files that hold the key go with the judge
            self._client_config_dir.cleanup()
            self._client_config_dir = None
            self._annotators = None

    # -- AlpacaEval as alpaca_eval runs it ---------------------------------------------------------
    def _alpaca_eval(self):
        """alpaca_eval's PairwiseAnnotator for the configured annotator, pointed at this judge's endpoint; one per
        thread, since an annotator keeps its annotations in memory."""
        with self._lock:
            if self._client_config_dir is None:
                import tempfile

                self._client_config_dir = tempfile.TemporaryDirectory(prefix="remax-bench-judge-")
                self._annotators = threading.local()
        annotator = getattr(self._annotators, "annotator", None)
        if annotator is None:
            workdir = Path(self._client_config_dir.name) / f"thread-{threading.get_ident()}"
            workdir.mkdir(parents=True, exist_ok=True)
            self._secret = self.api_key()  # scrubbed from any error text, as on the direct path
            annotator = alpaca_eval_annotator(self.alpaca_annotator, self.request_model, self.base_url,
                                              self._secret, workdir, self.timeout_s, self.max_retries)
            self._annotators.annotator = annotator
        return annotator

    def _alpaca_eval_pairwise(self, items):
        def one(item):
            # One pair per call: a failure costs that pair only, and each verdict can be cached as it arrives.
            row = {"instruction": item.instruction, "output_1": item.output_1, "output_2": item.output_2}
            with self._lock:
                self.requests += 1
            annotator = self._alpaca_eval()
            annotator.parse_failures.clear()
            try:
                annotated = annotator.annotate_pairs([row])[0]
            except Exception as err:  # noqa: BLE001 - counted as unjudged, the rest of the run goes on
                return Verdict(None, error=self.scrub(f"{type(err).__name__}: {err}")[:300])
            preference = annotated.get("preference")
            raw = annotated.get("preference_raw_completion")
            raw = self.scrub(str(raw)) if raw is not None else None
            if preference is None or (isinstance(preference, float) and math.isnan(preference)):
                # alpaca_eval logs why its parser failed and returns no preference; the cause goes with the verdict
                why = annotator.parse_failures[-1] if annotator.parse_failures else "no reply to parse"
                return Verdict(None, raw=raw, error=self.scrub(f"alpaca_eval's annotator gave no preference: {why}"))
            # 1: output_1 (the reference) preferred, 2: output_2 (the model); weighted preferences lie between
            return Verdict(float(preference), raw=raw, extra={"annotator": self.alpaca_annotator})

        return self._map(one, items)

    def single(self, items):
        prompts = self.judge_prompts()

        def one(item):
            messages, name, missing_ref = render_single(prompts, item)
            rating, text, error, attempts = self.ask(messages, parse_rating, self.max_tokens_single)
            extra = {"prompt": name, "missing_reference": missing_ref}
            return Verdict(rating, raw=text, error=error, attempts=attempts, extra=extra)

        return self._map(one, items)


class VLLMLocalJudge(OpenAIJudge):
    """The openai judge against a ``vllm serve`` of an open judge model that we start on 127.0.0.1."""

    type = "vllm_local"

    def __init__(self, model: str, port: int = 8011, serve_args: list[str] | tuple[str, ...] = (),
                 startup_timeout_s: float = 1800.0, log_path: str | Path | None = None,
                 command: list[str] | None = None, **kwargs):
        super().__init__(model, base_url=f"http://{LOCAL_HOST}:{port}/v1", **kwargs)
        self.port = port
        self.serve_args = list(serve_args)
        self.command = command or vllm_serve_command(model, port, self.serve_args)
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path
        self.server: ManagedServer | None = None

    def identity(self):
        return {"type": self.type, "model": self.model, "serve_args": self.serve_args}

    @property
    def request_model(self) -> str:
        # vllm serve answers to the model path, or to --served-model-name when one is given
        args = self.serve_args
        for i, arg in enumerate(args):
            if arg == "--served-model-name" and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("--served-model-name="):
                return arg.split("=", 1)[1]
        return self.model

    def api_key(self) -> str:
        # A local server needs no key; when the variable is set, the server is started to require it.
        return os.environ.get(self.api_key_env) or "EMPTY"

    def __enter__(self):
        key = os.environ.get(self.api_key_env)
        self.server = ManagedServer(self.command, port=self.port, startup_timeout_s=self.startup_timeout_s,
                                    log_path=self.log_path, env={"VLLM_API_KEY": key} if key else None)
        self.server.__enter__()
        return self

    def close(self):
        super().close()
        if self.server is not None:
            self.server.stop()
            self.server = None


def alpaca_eval_annotator(config_name: str, model: str, base_url: str | None, api_key: str, workdir: Path,
                          timeout_s: float = 60.0, max_retries: int = 3):
    """alpaca_eval's ``PairwiseAnnotator`` for one of its annotator configs (e.g. the leaderboard's
    ``weighted_alpaca_eval_gpt4_turbo``), unchanged except for the model name and the endpoint.

    alpaca_eval chooses its OpenAI client from a client-config YAML (its ``client_configs`` mechanism); ours
    holds this judge's base URL and key and lives in ``workdir``, inside a private temporary folder removed when
    the judge closes (the key is never written next to results); the client retries as eval.judge.max_retries
    says. Its JSON cache is not used: remax-bench's per-verdict cache keeps each answer as it arrives. Why its
    parser rejected a reply (alpaca_eval only logs it) is kept in the annotator's ``parse_failures``."""
    import alpaca_eval
    import yaml
    from alpaca_eval.annotators import PairwiseAnnotator

    configs_root = Path(alpaca_eval.__file__).parent / "evaluators_configs"
    source = configs_root / config_name / "configs.yaml"
    if not source.is_file():
        known = sorted(p.name for p in configs_root.iterdir() if (p / "configs.yaml").is_file())[:12]
        raise EvalConfigError(f"eval.alpaca_eval.annotator: alpaca_eval has no annotator config {config_name!r} "
                              f"(e.g. {', '.join(known)})")
    (name, config), = yaml.safe_load(source.read_text()).items()
    config["prompt_template"] = str(configs_root / config["prompt_template"])
    kwargs = config.setdefault("completions_kwargs", {})
    kwargs["model_name"] = model
    kwargs["client_config_path"] = str(workdir / "client_configs.yaml")
    kwargs["requires_chatml"] = True  # its prompts are chat prompts, whatever the judge model is called
    kwargs["n_retries"] = 3
    client = {"api_key": api_key, "timeout": timeout_s, "max_retries": max_retries,
              **({"base_url": base_url} if base_url else {})}
    client_path = workdir / "client_configs.yaml"
    client_path.touch(mode=0o600)
    client_path.write_text(yaml.safe_dump({"default": [client]}))
    derived = workdir / "annotators" / name / "configs.yaml"
    derived.parent.mkdir(parents=True, exist_ok=True)
    derived.write_text(yaml.safe_dump({name: config}))
    annotator = PairwiseAnnotator(annotators_config=str(derived), caching_path=None, is_avoid_reannotations=False)
    annotator.parse_failures = []
    for single in annotator.annotators.values():
        single.fn_completion_parser = _recording(single.fn_completion_parser, annotator.parse_failures)
    return annotator


def _recording(parse: Callable, failures: list[str]) -> Callable:
    """alpaca_eval's completion parser, noting why it failed before alpaca_eval swallows the error."""

    def parse_and_record(completion, *args, **kwargs):
        try:
            return parse(completion, *args, **kwargs)
        except Exception as err:
            failures.append(parse_failure(completion, err))
            raise

    return parse_and_record


def parse_failure(completion: Any, err: Exception) -> str:
    """Why alpaca_eval could not read a preference from the judge's reply, in words."""
    if isinstance(completion, dict) and "logprobs" in completion and not completion.get("logprobs"):
        return (f"{NO_LOGPROBS}: the reply holds none, and this annotator reads its preference from them "
                f"({type(err).__name__} in alpaca_eval's logprob parser)")
    return f"its parser raised {type(err).__name__}: {str(err)[:200]}"


NO_LOGPROBS = "the judge returned no log-probabilities"
