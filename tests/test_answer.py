"""parse_response never raises and accepts exactly what the conventions accept (docs/conventions.md, parsing)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from recipe.task.answer import ParsedResponse, parse_response

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
HW = (840, 840)

whitespace = st.text(alphabet=" \t\n\r", max_size=4)
# Free text that may contain angle brackets and tag-like fragments, but never a complete tag.
free_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60).filter(lambda s: not any(t in s for t in TAGS))
json_scalars = (
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=8)
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5), max_leaves=10)
coordinate = st.one_of(st.integers(-100, 1000), st.floats(-100, 1000, allow_nan=False))


def response(think: str, answer: str, pre: str = "", mid: str = "", post: str = "") -> str:
    return f"{pre}<think>{think}</think>{mid}<answer>{answer}</answer>{post}"


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def reference_box(value, hw=HW):
    """The box rule restated: 4 finite numbers, x1 < x2 and y1 < y2 after clipping to [0, W] x [0, H]."""
    if not (isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)):
        return None
    x1, x2 = (min(max(float(v), 0.0), hw[1]) for v in value[0::2])
    y1, y2 = (min(max(float(v), 0.0), hw[0]) for v in value[1::2])
    return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None


def reference_point(value, hw=HW):
    """The point rule restated: 2 finite numbers with 0 <= x < W and 0 <= y < H."""
    if not (isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)):
        return None
    x, y = float(value[0]), float(value[1])
    return (x, y) if 0 <= x < hw[1] and 0 <= y < hw[0] else None


def check_invariants(parsed: ParsedResponse) -> None:
    assert parsed.format_ok == (parsed.format_error is None)
    assert (parsed.answer is None) == (parsed.answer_error is not None)
    for accessor in (parsed.bbox_2d, parsed.point_2d, parsed.label, parsed.pos_point, parsed.neg_point):
        field = accessor()
        assert field.ok == (field.error is None)
        if parsed.answer is None:
            assert not field.ok


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_arbitrary_text_never_raises(text):
    check_invariants(parse_response(text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*TAGS, "{", "}", "[", "]", '"', "bbox_2d", ":", ",", "1", "null", "NaN", " ", "```"])))
def test_tag_and_json_soup_never_raises(pieces):
    check_invariants(parse_response("".join(pieces)))


@pytest.mark.parametrize("value", [None, 3, b"<think></think>", ["x"], {"a": 1}])
def test_non_text_is_a_failed_parse(value):
    parsed = parse_response(value)
    assert not parsed.format_ok and parsed.answer is None and "not text" in parsed.answer_error


@settings(max_examples=300, deadline=None)
@given(think=free_text, pre=whitespace, mid=whitespace, post=whitespace, inner=whitespace)
def test_tag_rule_accepts_well_formed_responses(think, pre, mid, post, inner):
    answer = inner + json.dumps({"bbox_2d": [1, 2, 3, 4]}) + inner
    parsed = parse_response(response(think, answer, pre, mid, post))
    assert parsed.format_ok, parsed.format_error
    assert parsed.answer == {"bbox_2d": [1, 2, 3, 4]}


@settings(max_examples=300, deadline=None)
@given(think=free_text, junk=free_text.filter(lambda s: s.strip()), where=st.sampled_from(["pre", "mid", "post"]))
def test_tag_rule_rejects_text_outside_the_blocks(think, junk, where):
    parsed = parse_response(response(think, '{"bbox_2d": [1, 2, 3, 4]}', **{where: junk}))
    assert not parsed.format_ok
    # The answer itself is still read: reasoning format and answer validity are separate rewards.
    assert parsed.answer == {"bbox_2d": [1, 2, 3, 4]}


@settings(max_examples=200, deadline=None)
@given(think=free_text, tag=st.sampled_from(TAGS), position=st.sampled_from(["think", "post"]))
def test_tag_rule_rejects_repeated_tags(think, tag, position):
    text = response(think + tag, "{}") if position == "think" else response(think, "{}") + tag
    parsed = parse_response(text)
    assert not parsed.format_ok
    assert "expected once" in parsed.format_error


@pytest.mark.parametrize(
    "text",
    [
        "<answer>{}</answer><think></think>",
        "<think></think>",
        "<think><answer></think>{}</answer>",
        "<THINK></THINK><ANSWER>{}</ANSWER>",
        "<think></think>\n<answer>{}</answer> trailing",
    ],
)
def test_tag_rule_near_misses(text):
    assert not parse_response(text).format_ok


def test_two_answer_blocks_give_no_answer():
    parsed = parse_response('<think>a</think><answer>{"bbox_2d": [1, 2, 3, 4]}</answer><answer>{}</answer>')
    assert not parsed.format_ok and parsed.answer is None
    assert "more than one" in parsed.answer_error


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"bbox_2d": [1, 2, 3, 4]}', {"bbox_2d": [1, 2, 3, 4]}),
        ('\n ```json\n{"bbox_2d": [1, 2, 3, 4]}\n```  ', {"bbox_2d": [1, 2, 3, 4]}),
        ('```\n{"a": null}\n```', {"a": None}),
        ('{"bbox_2d": [1, 2, 3, 4]} extra', None),
        ('Answer: {"bbox_2d": [1, 2, 3, 4]}', None),
        ('```python\n{"a": 1}\n```', None),
        ('{"bbox_2d": [1, 2, 3, NaN]}', None),
        ('{"bbox_2d": [Infinity, 2, 3, 4]}', None),
        ('{"a": 1, "a": 2}', None),
        ("{'bbox_2d': [1, 2, 3, 4]}", None),
        ("[1, 2, 3, 4]", None),
        ('"text"', None),
        ("", None),
        ("[" * 5000 + "]" * 5000, None),
        ('{"a": ' + "9" * 5000 + "}", None),
    ],
)
def test_answer_json_is_strict(content, expected):
    parsed = parse_response(response("t", content))
    assert parsed.answer == expected
    assert (parsed.answer_error is None) == (expected is not None)


@settings(max_examples=500, deadline=None)
@given(value=json_values | st.lists(coordinate, min_size=4, max_size=4))
def test_bbox_validity_matches_the_rule(value):
    parsed = parse_response(response("t", json.dumps({"bbox_2d": value})))
    field = parsed.bbox_2d()
    expected = reference_box(value)
    assert field.ok == (expected is not None)
    assert field.value == expected


@settings(max_examples=500, deadline=None)
@given(value=json_values | st.lists(coordinate, min_size=2, max_size=2), key=st.sampled_from(["point_2d", "pos_point"]))
def test_point_validity_matches_the_rule(value, key):
    parsed = parse_response(response("t", json.dumps({key: value})))
    field = parsed.point_2d() if key == "point_2d" else parsed.pos_point()
    expected = reference_point(value)
    if key == "pos_point" and value is None:
        assert field.ok and field.value is None  # null means "no click" in refinement answers
    else:
        assert field.ok == (expected is not None)
        assert field.value == expected


@pytest.mark.parametrize(
    ("box", "ok"),
    [
        ([10, 20, 30, 40], True),
        ([30, 20, 10, 40], False),  # inverted
        ([10, 40, 30, 20], False),
        ([10, 20, 10, 40], False),  # zero width
        (["10", 20, 30, 40], False),  # strings instead of numbers
        ([True, 20, 30, 40], False),
        ([10, 20, 30], False),
        ([900, 20, 1000, 40], False),  # entirely right of the image: empty after clipping
        ([-50, -50, 2000, 2000], True),  # clipped to the whole image
        (None, False),
        ({"x1": 1}, False),
    ],
)
def test_bbox_near_misses(box, ok):
    field = parse_response(response("t", json.dumps({"bbox_2d": box}))).bbox_2d()
    assert field.ok == ok
    if ok:
        assert field.value[0] >= 0 and field.value[2] <= 840


@pytest.mark.parametrize(
    ("point", "ok"),
    [
        ([0, 0], True),
        ([839.5, 839], True),
        ([840, 10], False),
        ([10, -1], False),
        ([1, 2, 3], False),
        (["1", 2], False),
    ],
)
def test_point_near_misses(point, ok):
    assert parse_response(response("t", json.dumps({"point_2d": point}))).point_2d().ok == ok


def test_image_size_governs_validity():
    parsed = parse_response(
        response("t", '{"point_2d": [900, 10], "bbox_2d": [0, 0, 1000, 500]}'), image_hw=(480, 1200)
    )
    assert parsed.point_2d().value == (900.0, 10.0)
    assert parsed.bbox_2d().value == (0.0, 0.0, 1000.0, 480.0)


def test_samr1_answer_fields():
    parsed = parse_response(
        '<think>the dog on the left</think>\n<answer>{"bbox_2d": [12, 40.5, 300, 420], "point_2d": [150, 200], '
        '"label": " brown dog "}</answer>'
    )
    assert parsed.format_ok
    assert parsed.bbox_2d().value == (12.0, 40.5, 300.0, 420.0)
    assert parsed.point_2d().value == (150.0, 200.0)
    assert parsed.label().value == "brown dog"
    assert not parsed.pos_point().ok and "missing key" in parsed.pos_point().error


@pytest.mark.parametrize("label", ["", "   ", 3, None, ["dog"]])
def test_label_must_be_a_non_empty_string(label):
    assert not parse_response(response("t", json.dumps({"label": label}))).label().ok


@pytest.mark.parametrize(
    ("answer", "pos", "neg"),
    [
        ({"pos_point": None, "neg_point": None}, (True, None), (True, None)),
        ({"pos_point": [10, 20], "neg_point": None}, (True, (10.0, 20.0)), (True, None)),
        ({"pos_point": None, "neg_point": [5, 6]}, (True, None), (True, (5.0, 6.0))),
        ({"pos_point": [1, 1], "neg_point": [900, 1]}, (True, (1.0, 1.0)), (False, None)),
        ({"pos_point": "null"}, (False, None), (False, None)),
    ],
)
def test_refinement_points_allow_null(answer, pos, neg):
    parsed = parse_response(response("t", json.dumps(answer)))
    assert (parsed.pos_point().ok, parsed.pos_point().value) == pos
    assert (parsed.neg_point().ok, parsed.neg_point().value) == neg
    assert parsed.clicks() == ((pos[1], neg[1]) if pos[0] and neg[0] else None)


def test_null_is_not_a_valid_samr1_point():
    assert not parse_response(response("t", '{"point_2d": null}')).point_2d().ok


@given(st.text(max_size=50))
def test_missing_answer_has_a_reason(text):
    assume("<answer>" not in text and "</answer>" not in text)
    parsed = parse_response(text)
    assert parsed.answer is None and parsed.answer_error == "no <answer>...</answer> block"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('<answer>{"bbox_2d": [1, 2, 3, 4]}</answer>', True),
        (' \n<answer>{"bbox_2d": [1, 2, 3, 4]}</answer>\n', True),
        ('<think>x</think><answer>{"bbox_2d": [1, 2, 3, 4]}</answer>', False),
        ('so: <answer>{"bbox_2d": [1, 2, 3, 4]}</answer>', False),
        ("<answer>{}</answer><answer>{}</answer>", False),
    ],
)
def test_answer_only_tag_rule_for_the_no_cot_ablation(text, ok):
    parsed = parse_response(text, reasoning=False)
    assert parsed.format_ok == ok
    assert parse_response(text).format_ok == text.startswith("<think>")  # the default rule is unchanged


def test_clicks_of_a_failed_parse_are_none():
    assert parse_response("no answer").clicks() is None


def test_parsing_an_answer_imports_neither_torch_nor_sam2():
    """Rewards, loops and evaluation parse every response: that must not cost seconds of torch and SAM2 imports."""
    code = """
import sys
from recipe.task.answer import parse_response
parsed = parse_response('<think>t</think><answer>{"bbox_2d": [1, 2, 30, 40], "point_2d": [5, 6]}</answer>')
assert parsed.bbox_2d().value == (1.0, 2.0, 30.0, 40.0) and parsed.point_2d().value == (5.0, 6.0)
print(sorted(name for name in ("torch", "torchvision", "sam2", "cv2") if name in sys.modules))
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
