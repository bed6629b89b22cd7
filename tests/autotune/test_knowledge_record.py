"""Knowledge-base records: what a record refuses, its JSON form, recipe keys."""

import json

import pytest

from hamjax.autotune.knowledge_record import Record, check_results, parse_line, recipe_key

RECIPE = {"steps": [{"kind": "quantize"}, {"kind": "export", "precisions": "int8"}]}
RESULTS = {"accuracy_drop": 0.4, "size_bytes": 2048, "size_reduction": 3.5, "feasible": True}


def _fields(**changes):
    fields = {"signature": {"family": "mlp", "params": 10}, "family": "mlp", "recipe": RECIPE, "results": RESULTS,
              "environment": {"device": "cpu"}, "time": 1.8e9, "source": "lab", "confidence": 0.9}  # fmt: skip
    return {**fields, **changes}


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"family": ""}, "Record: family must be a non-empty string of at most 200 characters, got ''"),
        ({"source": "x" * 201}, "Record: source must be a non-empty string of at most 200 characters"),
        ({"id": "ABC"}, "Record: id must be 32 lowercase hex characters or None, got 'ABC'"),
        ({"signature": [1, 2]}, "Record: signature must be a dict, got [1, 2]"),
        ({"environment": {"when": {1, 2}}}, "Record: environment must hold JSON values only"),
        ({"environment": {1: "x"}}, "Record: environment must have string keys"),
        ({"recipe": {"name": "no steps"}}, "recipe_key: recipe must be a dict with a non-empty list of steps"),
        ({"recipe": {"steps": [{"bits": 8}]}}, "recipe_key: recipe steps must each be a dict with a 'kind'"),
        ({"results": {"accuracy_drop": 0.1}}, "Record: results must have 'feasible', got keys ['accuracy_drop']"),
        (
            {"results": {**RESULTS, "latency_ms": float("inf")}},
            "Record: results.latency_ms must be a finite number > 0",
        ),
        ({"results": {**RESULTS, "size_bytes": -1}}, "Record: results.size_bytes must be a finite number >= 0, got -1"),
        ({"results": {**RESULTS, "feasible": "yes"}}, "Record: results.feasible must be a bool, got 'yes'"),
        ({"results": {**RESULTS, "constraints": 3}}, "Record: results.constraints must be a dict, got 3"),
        ({"results": {**RESULTS, "extra": float("nan")}}, "Record: results must hold JSON values only"),
        ({"confidence": 0.0}, "Record: confidence must be a finite number > 0 and <= 1, got 0.0"),
        ({"confidence": 1.5}, "Record: confidence must be a finite number > 0 and <= 1, got 1.5"),
        ({"time": -1.0}, "Record: time must be a finite number >= 0, got -1.0"),
    ],
)
def test_record_refuses_bad_fields(changes, phrase):
    with pytest.raises(ValueError) as info:
        Record(**_fields(**changes))
    assert phrase in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_record_owns_plain_copies_of_its_dicts():
    signature = {"family": "mlp", "shape": (4, 2)}
    record = Record(**_fields(signature=signature))
    signature["family"] = "cnn"
    assert record.signature == {"family": "mlp", "shape": [4, 2]}
    assert check_results("x", {**RESULTS, "note": "kept"}) == {**RESULTS, "note": "kept"}
    assert isinstance(check_results("x", RESULTS)["size_bytes"], int)


def test_dict_and_json_line_round_trip():
    record = Record(**_fields(), id="ab" * 16)
    assert Record.from_dict(record.to_dict()) == record
    assert parse_line(json.dumps(record.to_dict())) == record
    without_confidence = {k: v for k, v in record.to_dict().items() if k != "confidence"}
    assert Record.from_dict(without_confidence).confidence == 1.0
    with pytest.raises(ValueError, match=r"Record.from_dict: unknown fields \['colour'\]"):
        Record.from_dict({**record.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match=r"Record.from_dict: missing fields \['time', 'source'\]"):
        Record.from_dict({k: v for k, v in record.to_dict().items() if k not in ("time", "source")})
    with pytest.raises(ValueError, match="a record must be a JSON object, got"):
        parse_line("[1, 2]")
    with pytest.raises(ValueError, match="not valid JSON: Infinity is not a number"):
        parse_line('{"time": Infinity}')


def test_recipe_key_ignores_names_defaults_and_search():
    spelled = {"name": "other", "description": "x", "steps": [
        {"kind": "quantize", "method": "static", "bits": 8, "search": {"bits": {"choices": [4, 8]}}},
        {"kind": "export", "precisions": "int8"}]}  # fmt: skip
    assert recipe_key(RECIPE) == recipe_key(spelled) == Record(**_fields(recipe=spelled)).recipe_key
    assert recipe_key(RECIPE) != recipe_key({"steps": [{"kind": "quantize", "bits": 4}, {"kind": "export"}]})
    unknown = {"steps": [{"kind": "not-a-kind", "x": 1}]}  # keyed as written where it does not validate
    assert recipe_key(unknown) != recipe_key({"steps": [{"kind": "not-a-kind"}]})
