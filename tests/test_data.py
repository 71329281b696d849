import json
from types import SimpleNamespace

import pandas as pd
import pytest

from remax_bench.config import DataSource, SyntheticData
from remax_bench.data import DataError, load_preferences, load_prompts, load_sft

SYN = SyntheticData(n_sft=20, n_pairs=10, n_prompts=15, n_eval=5)


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return DataSource(source=str(path))


def test_synthetic_sources_use_the_configured_sizes():
    src = DataSource(source="synthetic")
    assert len(load_prompts(src, SYN)) == 15 and len(load_prompts(src, SYN, "eval")) == 5
    assert len(load_sft(src, SYN)) == 20 and len(load_preferences(src, SYN)) == 10
    assert len(load_sft(DataSource(source="synthetic", max_examples=3), SYN)) == 3


def test_plain_jsonl_and_parquet(tmp_path):
    sft = load_sft(_jsonl(tmp_path / "sft.jsonl", [{"instruction": "hi", "output": "hello"}]), SYN)
    assert sft == [{"prompt": "hi", "response": "hello"}]
    pd.DataFrame([{"prompt": "p", "chosen": "a", "rejected": "b"}]).to_parquet(tmp_path / "pairs.parquet")
    pairs = load_preferences(DataSource(source=str(tmp_path / "pairs.parquet")), SYN)
    assert pairs == [{"prompt": "p", "chosen": "a", "rejected": "b"}]


def test_anthropic_hh_layout(tmp_path):
    row = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Name a colour\n\nAssistant: Blue",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Name a colour\n\nAssistant: No",
    }
    src = _jsonl(tmp_path / "hh.jsonl", [row])
    pair = load_preferences(src, SYN)[0]
    assert pair["chosen"] == "Blue" and pair["rejected"] == "No"
    assert pair["prompt"].startswith("Hi") and pair["prompt"].endswith("Name a colour")
    assert "Assistant: Hello" in pair["prompt"]  # earlier turns stay in the prompt
    assert load_sft(src, SYN)[0]["response"] == "Blue"
    assert load_prompts(src, SYN)[0]["prompt"] == pair["prompt"]


def test_ultrafeedback_binarized_layout(tmp_path):
    row = {
        "prompt": "Say hi",
        "chosen": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "No."}],
        "messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}],
    }
    src = _jsonl(tmp_path / "uf.jsonl", [row])
    assert load_preferences(src, SYN) == [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}]
    assert load_sft(src, SYN) == [{"prompt": "Say hi", "response": "Hi!"}]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_sft(DataSource(source=str(tmp_path / "missing.jsonl")), SYN)
    with pytest.raises(DataError, match="expected columns prompt/chosen/rejected"):
        load_preferences(_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}]), SYN)
    with pytest.raises(DataError, match="row 1 has an empty or missing 'response'"):
        load_sft(_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "q", "response": ""}]), SYN)
    with pytest.raises(DataError, match="expected a prompt column"):
        load_sft(_jsonl(tmp_path / "c.jsonl", [{"text": "x"}]), SYN)


def test_hub_id_that_cannot_be_fetched_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load dataset 'someone/some-dataset'.*Give a local .jsonl"):
        load_sft(DataSource(source="someone/some-dataset"), SYN)
