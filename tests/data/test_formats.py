"""Format recognition, column mapping and parsing of each format into canonical chats."""

from __future__ import annotations

import pytest

from gradsift.data.errors import DataError
from gradsift.data.formats import KNOWN_COLUMNS, FieldMap, Format, Parsed, flan_task, infer_schema


def parse(row: dict, **kw: object) -> Parsed:
    return infer_schema(row, **kw).parse(row, path="d.jsonl", line=7)  # type: ignore[arg-type]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


TURNS = [user("q"), bot("a")]
HH_CHOSEN = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken..."
HH_REJECTED = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No."


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"instruction": "i", "input": "", "output": "o"}, Format.ALPACA),
        ({"instruction": "i", "output": "o"}, Format.ALPACA),
        ({"instruction": "i", "context": "c", "response": "r", "category": "open_qa"}, Format.ALPACA),  # Dolly
        ({"prompt": "p", "response": "r"}, Format.PROMPT_RESPONSE),
        ({"prompt": "p", "completion": "c"}, Format.PROMPT_RESPONSE),
        ({"question": "q", "answer": "a"}, Format.PROMPT_RESPONSE),  # GSM8K
        ({"query": "q", "response": "r"}, Format.PROMPT_RESPONSE),
        ({"input": "i", "target": "t"}, Format.PROMPT_RESPONSE),  # BIG-Bench-Hard
        ({"goal": "g", "target": "t"}, Format.PROMPT_RESPONSE),  # AdvBench
        ({"prompt": "p", "response": "r", "rejected": "x"}, Format.PROMPT_RESPONSE),
        ({"messages": TURNS}, Format.MESSAGES),
        ({"messages": TURNS, "label": True}, Format.MESSAGES),  # LLaMA-Factory KTO demo
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, Format.SHAREGPT),
        ({"conversations": TURNS}, Format.MESSAGES),
        ({"col0": "q", "col1": "a", "col2": "r"}, Format.FLAN_COT),
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, Format.PAIR),
        ({"prompt": "p", "chosen": TURNS, "rejected": TURNS}, Format.PAIR),  # UltraFeedback binarized
        ({"chosen": TURNS, "rejected": TURNS}, Format.PAIR),
        ({"prompt": [user("p")], "chosen": [bot("c")], "rejected": [bot("r")]}, Format.PAIR),  # TRL explicit prompt
        (
            {
                "conversations": [{"from": "human", "value": "q"}],
                "chosen": {"from": "gpt", "value": "c"},
                "rejected": {},
            },
            Format.SHAREGPT_PAIR,
        ),
        ({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, Format.HH),
    ],
)
def test_detects_format(row, fmt):
    assert infer_schema(row).fmt is fmt


def test_unrecognised_columns_name_line_and_columns():
    with pytest.raises(
        DataError, match=r"cannot recognise the record format from the columns \['id', 'prompt'\]"
    ) as e:
        infer_schema({"id": "koala_0", "prompt": "p"}, path="koala.jsonl", line=3)
    assert (e.value.path, e.value.line, e.value.field) == ("koala.jsonl", 3, None)
    assert "fmt=" in str(e.value) and "alpaca (instruction, input, output)" in str(e.value)


def test_headerless_single_column_is_not_recognised():
    with pytest.raises(DataError, match=r"columns \['col0'\]"):
        infer_schema({"col0": "Write a script"})


def test_resolved_columns():
    schema = infer_schema({"id": 1, "question": "q", "answer": "a", "category": "math"})
    assert schema.columns == FieldMap(
        id="id", prompt="question", response="answer", system="system", rejected="rejected", task="category"
    )


# Parsing -----------------------------------------------------------------------------------------


def test_alpaca_joins_instruction_and_input_with_a_blank_line():
    p = parse({"instruction": "Translate", "input": "Bonjour", "output": "Hello"})
    assert p.messages == [user("Translate\n\nBonjour"), bot("Hello")]
    assert p.response_field == "output"
    assert parse({"instruction": "Say hi", "input": " ", "output": "Hi"}).messages[0] == user("Say hi")
    assert parse({"instruction": "Say hi", "output": "Hi"}).messages[0] == user("Say hi")


def test_dolly_context_and_category():
    p = parse({"instruction": "Who?", "context": "Text.", "response": "Them.", "category": "closed_qa"})
    assert p.messages == [user("Who?\n\nText."), bot("Them.")]
    assert p.task == "closed_qa"


def test_prompt_response_conversational():
    p = parse({"prompt": [user("p")], "completion": [bot("c")]})
    assert p.messages == [user("p"), bot("c")]


def test_system_column_is_prepended():
    p = parse({"system": "Be brief.", "instruction": "i", "output": "o"})
    assert p.messages == [{"role": "system", "content": "Be brief."}, user("i"), bot("o")]
    assert parse({"system": "", "instruction": "i", "output": "o"}).messages == [user("i"), bot("o")]


def test_system_twice_is_an_error():
    row = {"system": "s", "messages": [{"role": "system", "content": "t"}, *TURNS]}
    with pytest.raises(DataError, match="system prompt is given both") as e:
        parse(row)
    assert (e.value.line, e.value.field) == (7, "system")


def test_sharegpt_roles_are_mapped():
    row = {
        "conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "a1"},
            {"from": "Human", "value": "q2"},
            {"from": "gpt", "value": "a2"},
        ]
    }
    p = parse(row)
    assert p.messages == [{"role": "system", "content": "s"}, user("q1"), bot("a1"), user("q2"), bot("a2")]
    assert p.response_field == "conversations[4].content"


def test_messages_rejected_and_id_and_task():
    p = parse({"id": 12, "messages": TURNS, "rejected": "bad", "task": "t"})
    assert (p.id, p.rejected, p.task) == ("12", "bad", "t")


def test_flan_cot_template_newlines_and_task():
    row = {"col0": "Is it?\\nOptions:\\n- yes\\n- no", "col1": "yes", "col2": "Because.\\nReally."}
    schema = infer_schema(row, path="/data/cot_data/creak_train.tsv.gz")
    p = schema.parse(row)
    assert p.messages == [user("Is it?\nOptions:\n- yes\n- no"), bot("Because.\nReally. So the answer is yes.")]
    assert p.task == "creak"


@pytest.mark.parametrize(
    ("path", "task"),
    [
        ("gsm8k_train.tsv.gz", "gsm8k"),
        ("a/b/strategyqa_train.tsv", "strategyqa"),
        ("qasc.tsv", "qasc"),
        ("x_dev.tsv", "x"),
    ],
)
def test_flan_task(path, task):
    assert flan_task(path) == task


def test_flan_accepts_only_id_and_task_mapping():
    row = {"col0": "q", "col1": "a", "col2": "r"}
    with pytest.raises(ValueError, match="fields.prompt does not apply to the flan_cot format"):
        infer_schema(row, fmt="flan_cot", fields=FieldMap(prompt="col0"))
    with pytest.raises(DataError, match="headerless 3-column TSV") as e:
        infer_schema({"col0": "q", "col1": "a"}, fmt=Format.FLAN_COT, line=1)
    assert e.value.field == "col2"


def test_pair_strings():
    p = parse({"prompt": "p", "chosen": "good", "rejected": "bad"})
    assert (p.messages, p.rejected) == ([user("p"), bot("good")], "bad")


def test_pair_full_conversations_take_the_shared_prefix():
    row = {"prompt": "q", "chosen": [user("q"), bot("good")], "rejected": [user("q"), bot("bad")]}
    p = parse(row)
    assert (p.messages, p.rejected) == ([user("q"), bot("good")], "bad")


def test_pair_conversations_that_differ_before_the_end():
    row = {"chosen": [user("q"), bot("good")], "rejected": [user("other"), bot("bad")]}
    with pytest.raises(DataError, match="must share every turn but the last") as e:
        parse(row)
    assert (e.value.path, e.value.line, e.value.field) == ("d.jsonl", 7, "rejected")


def test_pair_without_prompt():
    with pytest.raises(DataError, match="expected the prompt here") as e:
        parse({"chosen": [bot("c")], "rejected": [bot("r")]}, fmt="pair")
    assert e.value.field == "prompt"


def test_sharegpt_pair():
    row = {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    p = parse(row)
    assert (p.messages, p.rejected) == ([user("q"), bot("good")], "bad")


def test_sharegpt_pair_response_must_be_the_assistant():
    row = {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "human", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    with pytest.raises(DataError, match=r"expected one assistant turn as the response, found roles \['user'\]") as e:
        parse(row)
    assert e.value.field == "chosen"


def test_hh_multi_turn_prompt_and_responses():
    p = parse({"chosen": HH_CHOSEN, "rejected": HH_REJECTED})
    assert p.messages == [user("Hi there"), bot("Hello!"), user("Tell me a joke"), bot("Why did the chicken...")]
    assert p.rejected == "No."


def test_hh_responses_sharing_their_start():
    chosen = "\n\nHuman: Q\n\nAssistant: I think yes"
    rejected = "\n\nHuman: Q\n\nAssistant: I think no"
    p = parse({"chosen": chosen, "rejected": rejected})
    assert (p.messages, p.rejected) == ([user("Q"), bot("I think yes")], "I think no")


def test_hh_transcripts_that_diverge_in_turn_count_use_the_common_prefix():
    # HH-RLHF has a few: a reply containing "Human:" without the blank line, then more turns.
    chosen = "\n\nHuman: Q\n\nAssistant: A  Human: more?\n\nAssistant: B"
    rejected = "\n\nHuman: Q\n\nAssistant: C"
    p = parse({"chosen": chosen, "rejected": rejected})
    assert p.messages == [user("Q"), bot("A  Human: more?\n\nAssistant: B")]
    assert p.rejected == "C"


def test_hh_without_leading_blank_line_and_empty_response():
    p = parse({"chosen": "Human: Q\n\nAssistant:", "rejected": "\n\nHuman: Q\n\nAssistant: no"}, fmt="hh")
    assert (p.messages, p.rejected) == ([user("Q"), bot("")], "no")


@pytest.mark.parametrize(
    ("chosen", "rejected", "message"),
    [
        ("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: B\n\nAssistant: y", "share a conversation"),
        ("Preamble\n\nHuman: A\n\nAssistant: x", "Preamble\n\nHuman: A\n\nAssistant: y", "start with"),
        ("\n\nAssistant: x", "\n\nAssistant: y", "expected a Human turn"),
    ],
)
def test_hh_malformed(chosen, rejected, message):
    with pytest.raises(DataError, match=message) as e:
        parse({"chosen": chosen, "rejected": rejected}, fmt="hh")
    assert e.value.line == 7


# Type and structure errors name the field ---------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"instruction": 3, "output": "o"}, "instruction", "expected a string, found an integer"),
        ({"instruction": "i", "output": None}, "output", "expected a string or an assistant turn, found null"),
        ({"instruction": "i", "input": ["x"], "output": "o"}, "input", "expected a string, found a list"),
        ({"messages": "hi"}, "messages", "expected a non-empty list of chat turns, found a string"),
        ({"messages": []}, "messages", "found an empty list"),
        ({"messages": [user("q"), "a"]}, "messages[1]", "expected a chat turn object"),
        ({"messages": [{"speaker": "x"}]}, "messages[0]", "expected a chat turn with 'role' and 'content'"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "unknown role 'tool'"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "found null"),
        ({"messages": [user("q"), {"role": "assistant", "content": {"text": "a"}}]}, "messages[1].content", "object"),
        ({"messages": [user("q"), user("again")]}, "messages", "no assistant turn"),
        ({"messages": TURNS, "id": 1.5}, "id", "expected a string or integer id, found a number"),
        ({"messages": TURNS, "id": True}, "id", "found a boolean"),
        ({"messages": TURNS, "task": 4}, "task", "expected a string"),
        ({"prompt": "p", "response": "\ud800"}, "response", "unpaired surrogate"),
        ({"prompt": "p", "response": "r", "rejected": 5}, "rejected", "found an integer"),
    ],
)
def test_bad_values_name_file_line_and_field(row, field, message):
    with pytest.raises(DataError, match=message) as e:
        parse(row)
    assert (e.value.path, e.value.line, e.value.field) == ("d.jsonl", 7, field)
    assert f"d.jsonl, line 7, field '{field}'" in str(e.value)


def test_missing_column_on_a_later_row():
    schema = infer_schema({"instruction": "i", "output": "o"})
    with pytest.raises(DataError, match="missing; the alpaca format reads this column") as e:
        schema.parse({"instruction": "i"}, path="d.json", line=4)
    assert (e.value.path, e.value.line, e.value.field) == ("d.json", 4, "output")


def test_explicit_format_missing_required_column():
    with pytest.raises(DataError, match="needs a response column") as e:
        infer_schema({"prompt": "p"}, fmt="prompt_response", path="d.csv", line=2)
    assert (e.value.line, e.value.field) == (2, "response")


# Field mapping and overrides -----------------------------------------------------------------------


def test_field_map_custom_names():
    row = {"uid": "a1", "ask": "q", "say": "a", "bad": "b", "skill": "math", "sys": "s"}
    fields = FieldMap(id="uid", prompt="ask", response="say", rejected="bad", task="skill", system="sys")
    schema = infer_schema(row, fields=fields)
    assert schema.fmt is Format.PROMPT_RESPONSE
    p = schema.parse(row)
    assert p.messages == [{"role": "system", "content": "s"}, user("q"), bot("a")]
    assert (p.id, p.rejected, p.task) == ("a1", "b", "math")


def test_field_map_alpaca_with_input_and_headerless_columns():
    row = {"col0": "instr", "col1": "ctx", "col2": "out"}
    schema = infer_schema(row, fields=FieldMap(prompt="col0", input="col1", response="col2"))
    assert schema.fmt is Format.ALPACA
    assert schema.parse(row).messages == [user("instr\n\nctx"), bot("out")]


def test_field_map_messages_and_pair_columns():
    row = {"dialog": TURNS}
    assert infer_schema(row, fields=FieldMap(messages="dialog")).parse(row).messages == TURNS
    row = {"q": "p", "good": "c", "bad": "r"}
    schema = infer_schema(row, fields=FieldMap(prompt="q", chosen="good", rejected="bad"))
    assert schema.fmt is Format.PAIR
    assert schema.parse(row).rejected == "r"


def test_explicit_format_overrides_detection():
    row = {"instruction": "i", "input": "x", "output": "o"}
    schema = infer_schema(row, fmt=Format.PROMPT_RESPONSE, fields=FieldMap(prompt="instruction"))
    assert schema.parse(row).messages == [user("i"), bot("o")]


def test_mapped_column_absent_is_not_detected():
    with pytest.raises(DataError, match="cannot recognise"):
        infer_schema({"prompt": "p", "response": "r"}, fields=FieldMap(prompt="nope"))


def test_field_map_for_a_role_the_format_does_not_use():
    with pytest.raises(ValueError, match="fields.input does not apply to the messages format"):
        infer_schema({"messages": TURNS}, fields=FieldMap(input="x"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "FieldMap.prompt must be a column name"),
        ({"prompt": 3}, "FieldMap.prompt must be a column name"),
        ({"prompt": "q", "response": "q"}, "FieldMap.prompt and FieldMap.response both name the column 'q'"),
    ],
)
def test_field_map_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FieldMap(**kwargs)


def test_format_parse():
    assert Format.parse("hh") is Format.HH
    assert Format.HH.is_pair and not Format.ALPACA.is_pair
    with pytest.raises(ValueError, match="unknown format 'jsonl'; expected one of: alpaca, prompt_response"):
        Format.parse("jsonl")


def test_known_columns_cover_every_default():
    assert {
        "instruction",
        "output",
        "question",
        "answer",
        "goal",
        "target",
        "messages",
        "conversations",
    } <= KNOWN_COLUMNS
    assert {"chosen", "rejected", "id", "task", "category", "system", "context", "completion"} <= KNOWN_COLUMNS
