import json
from types import SimpleNamespace

import pandas as pd
import pytest

from remax_bench.core.data import DataError, load_preferences, load_prompts, load_sft
from remax_bench.core.task import SyntheticTask, gold_score

# The loader is duck-typed: any object with these attributes will do (the suite's DataSource is one).
SYN = {"seed": 7, "tasks": None, "n_sft": 20, "n_pairs": 10, "n_prompts": 15, "n_eval": 5, "demo_noise": 0.5}


def src(source, **kw):
    fields = {"source": str(source), "split": "train", "subset": None, "max_examples": None, "layout": "auto"}
    return SimpleNamespace(**{**fields, **kw})


def jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return src(path)


HH_CHOSEN = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Name a colour\n\nAssistant: Blue"
HH_REJECTED = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Name a colour\n\nAssistant:  No "


def _uf(user, good, bad):
    return {
        "prompt": user,
        "chosen": [{"role": "user", "content": user}, {"role": "assistant", "content": good}],
        "rejected": [{"role": "user", "content": user}, {"role": "assistant", "content": bad}],
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": good}],
    }


def test_synthetic_sources_use_the_configured_sizes_and_task():
    s = src("synthetic")
    prompts, held = load_prompts(s, SYN), load_prompts(s, SYN, "eval")
    assert len(prompts) == 15 and len(held) == 5
    assert prompts == SyntheticTask(7, demo_noise=0.5).prompts(15)  # seed and settings reach the generator
    assert held == SyntheticTask(7).prompts(5, "eval")
    assert {"prompt", "task", "answer"} <= set(prompts[0])
    sft, pairs = load_sft(s, SYN), load_preferences(s, SYN)
    assert len(sft) == 20 and len(pairs) == 10
    assert sft == SyntheticTask(7, demo_noise=0.5).sft_demos(20)
    assert all(gold_score(p["prompt"], p["chosen"]) > gold_score(p["prompt"], p["rejected"]) for p in pairs)
    # max_examples only lowers a size, and keeps the first rows.
    assert load_sft(src("synthetic", max_examples=3), SYN) == sft[:3]
    assert len(load_sft(src("synthetic", max_examples=500), SYN)) == 20
    # Attribute-style settings work as well as a dict.
    assert load_prompts(s, SimpleNamespace(**SYN)) == prompts


def test_the_suite_config_objects_fit_the_loader():
    config = pytest.importorskip("remax_bench.core.config")
    rows = load_prompts(config.DataSource(source="synthetic"), config.SyntheticData(n_prompts=4), "train")
    assert len(rows) == 4


def test_plain_jsonl_layouts(tmp_path):
    rows = [
        {"instruction": "hi", "output": "hello "},
        {"instruction": "Translate", "input": "chat", "output": "cat"},  # Alpaca: the input joins the prompt
    ]
    assert load_sft(jsonl(tmp_path / "alpaca.jsonl", rows), SYN) == [
        {"prompt": "hi", "response": "hello"},
        {"prompt": "Translate\n\nchat", "response": "cat"},
    ]
    qa = jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4"}])
    assert load_sft(qa, SYN) == [{"prompt": "2+2?", "response": "4", "answer": "4"}]
    assert load_prompts(qa, SYN, "eval") == [{"prompt": "2+2?", "answer": "4"}]
    plain = jsonl(tmp_path / "p.jsonl", [{"prompt": "Reverse: abc", "task": "reverse", "id": 3}])
    assert load_prompts(plain, SYN) == [{"prompt": "Reverse: abc", "task": "reverse"}]


def test_parquet_and_max_examples(tmp_path):
    frame = pd.DataFrame([{"prompt": f"p{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(6)])
    frame.to_parquet(tmp_path / "pairs.parquet")
    pairs = load_preferences(src(tmp_path / "pairs.parquet"), SYN)
    assert pairs[2] == {"prompt": "p2", "chosen": "a2", "rejected": "b2"} and len(pairs) == 6
    cut = load_preferences(src(tmp_path / "pairs.parquet", max_examples=4), SYN)
    assert cut == pairs[:4]  # the first N, the same on every run
    # SFT from a preference file uses the chosen answer.
    assert load_sft(src(tmp_path / "pairs.parquet"), SYN)[0] == {"prompt": "p0", "response": "a0"}


def test_anthropic_hh_layout(tmp_path):
    s = jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    pair = load_preferences(s, SYN)[0]
    assert pair == {"prompt": "Hi\n\nAssistant: Hello\n\nHuman: Name a colour", "chosen": "Blue", "rejected": "No"}
    assert load_sft(s, SYN) == [{"prompt": pair["prompt"], "response": "Blue"}]
    assert load_prompts(s, SYN) == [{"prompt": pair["prompt"]}]
    single = jsonl(tmp_path / "hh1.jsonl",
                   [{"chosen": "\n\nHuman: Hi?\n\nAssistant: Yes.", "rejected": "Human: Hi?\n\nAssistant: No."}])
    assert load_preferences(single, SYN) == [{"prompt": "Hi?", "chosen": "Yes.", "rejected": "No."}]


def test_hh_prompts_in_a_prompt_column_lose_their_markers(tmp_path):
    # Dahoas/rm-static and full-hh-rlhf: prompt "\n\nHuman: ...\n\nAssistant:", chosen/rejected the answers.
    row = {"prompt": "\n\nHuman: Hi?\n\nAssistant:", "response": " Yes.", "chosen": " Yes.", "rejected": " No."}
    s = jsonl(tmp_path / "dahoas.jsonl", [row])
    assert load_preferences(s, SYN) == [{"prompt": "Hi?", "chosen": "Yes.", "rejected": "No."}]
    assert load_sft(s, SYN) == [{"prompt": "Hi?", "response": "Yes."}]


def test_ultrafeedback_binarized_layout(tmp_path):
    s = jsonl(tmp_path / "uf.jsonl", [_uf("Say hi", "Hi!", "No."), _uf("Say bye", "Bye!", "Hi.")])
    assert load_preferences(s, SYN) == [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
        {"prompt": "Say bye", "chosen": "Bye!", "rejected": "Hi."},
    ]
    assert load_sft(s, SYN)[1] == {"prompt": "Say bye", "response": "Bye!"}
    assert load_prompts(s, SYN) == [{"prompt": "Say hi"}, {"prompt": "Say bye"}]
    # A multi-turn conversation keeps its earlier turns in the prompt, as an HH prompt does.
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": "Blue"},
    ]
    multi = jsonl(tmp_path / "uf2.jsonl", [{"prompt": "Hi", "messages": turns}])
    assert load_sft(multi, SYN) == [{"prompt": "Hi\n\nAssistant: Hello\n\nHuman: Name a colour", "response": "Blue"}]


def test_a_declared_layout_is_used_and_checked(tmp_path):
    s = jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    assert load_sft(src(s.source, layout="hh"), SYN)[0]["response"] == "Blue"
    with pytest.raises(DataError, match=r"found columns: \['chosen', 'rejected'\]"):
        load_sft(src(s.source, layout="plain"), SYN)


def test_errors_name_the_field_and_the_problem(tmp_path):
    with pytest.raises(DataError, match=r"data\.sft\.source: data file .*missing\.jsonl not found"):
        load_sft(src(tmp_path / "missing.jsonl"), SYN)
    with pytest.raises(DataError, match=r"data\.eval_prompts\.source: data file .* not found"):
        load_prompts(src(tmp_path / "missing.parquet"), SYN, "eval")
    with pytest.raises(
        DataError,
        match=r"expected columns prompt/chosen/rejected or an Anthropic HH / UltraFeedback layout .*"
        r"found columns: \['prompt', 'response'\]",
    ):
        load_preferences(jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}]), SYN)
    # Rows are named by the line of the file they start on (blank lines and multi-line JSON counted).
    with pytest.raises(DataError, match=r"data\.sft\.source .*b\.jsonl', line 2: an empty or missing 'response'"):
        load_sft(jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "q", "response": " "}]), SYN)
    (tmp_path / "c.jsonl").write_text('{"prompt": "p"}\n\n{"prompt": "q"}\n{"prompt": ""}\n')
    with pytest.raises(DataError, match=r"c\.jsonl', line 4: an empty or missing 'prompt'"):
        load_prompts(src(tmp_path / "c.jsonl"), SYN)
    (tmp_path / "c.json").write_text('[\n  {"prompt": "p"},\n  {\n    "prompt": ""\n  }\n]\n')
    with pytest.raises(DataError, match=r"c\.json', line 3: an empty or missing 'prompt'"):
        load_prompts(src(tmp_path / "c.json"), SYN)
    (tmp_path / "c.csv").write_text('prompt,response\n"two\nlines",r\nq,\n')
    with pytest.raises(DataError, match=r"c\.csv', line 4: an empty or missing 'response'"):
        load_sft(src(tmp_path / "c.csv"), SYN)
    pd.DataFrame({"prompt": ["p", ""]}).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet', row 1: an empty or missing 'prompt'"):
        load_prompts(src(tmp_path / "c.parquet"), SYN)
    with pytest.raises(DataError, match=r"expected a prompt column .* found columns: \['text'\]"):
        load_prompts(jsonl(tmp_path / "d.jsonl", [{"text": "x"}]), SYN)
    with pytest.raises(DataError, match=r"e\.jsonl', line 1: a message list has no assistant message"):
        bad = _uf("q", "a", "b") | {"rejected": [{"role": "user", "content": "q"}]}
        load_preferences(jsonl(tmp_path / "e.jsonl", [bad]), SYN)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"data file .*empty\.jsonl is empty"):
        load_sft(src(tmp_path / "empty.jsonl"), SYN)
    pd.DataFrame({"prompt": [], "response": []}).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataError, match=r"data\.sft\.source: data file .*empty\.parquet is empty"):
        load_sft(src(tmp_path / "empty.parquet"), SYN)
    (tmp_path / "empty.json").write_text("[]\n")
    with pytest.raises(DataError, match=r"data file .*empty\.json is empty"):
        load_sft(src(tmp_path / "empty.json"), SYN)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match=r"data\.sft\.source: .*broken\.json, line 1: not valid JSON"):
        load_sft(src(tmp_path / "broken.json"), SYN)
    (tmp_path / "torn.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "resp\n')
    with pytest.raises(DataError, match=r"torn\.jsonl, line 2: not valid JSON"):
        load_sft(src(tmp_path / "torn.jsonl"), SYN)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl, line 2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        load_sft(src(tmp_path / "latin1.jsonl"), SYN)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt is not a \.jsonl / \.json / \.parquet / \.csv file"):
        load_sft(src(tmp_path / "notes.txt"), SYN)
    with pytest.raises(DataError, match=r"data\.synthetic: .*'n_sft'"):
        load_sft(src("synthetic"), {"seed": 0})
    with pytest.raises(DataError, match=r"data\.synthetic: unknown synthetic tasks \['nope'\]"):
        load_sft(src("synthetic"), SYN | {"tasks": ["nope"]})


def test_hub_id_that_cannot_be_fetched_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        DataError, match=r"could not load dataset 'someone/some-dataset' split 'train' \(offline\?\).*data\.preferences\.source"
    ):
        load_preferences(src("someone/some-dataset"), SYN)


def test_hub_ids_go_through_load_dataset_with_subset_and_split(monkeypatch):
    import datasets

    seen = {}

    def fake(path, name=None, split=None, **kwargs):
        seen.update(path=path, name=name, split=split)
        return datasets.Dataset.from_list([{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}] * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    rows = load_prompts(src("Anthropic/hh-rlhf", subset="harmless-base", split="test", max_examples=2), SYN, "eval")
    assert seen == {"path": "Anthropic/hh-rlhf", "name": "harmless-base", "split": "test"}
    assert len(rows) == 2 and rows[0]["prompt"].endswith("Name a colour")
