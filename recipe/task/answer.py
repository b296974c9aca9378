"""The one parser of model responses, shared by every recipe's rewards and by evaluation.

A response is ``<think>...</think>`` followed by ``<answer>...</answer>`` whose content is one JSON object, or, for a
generalized row (several objects or none), a JSON list of objects (:meth:`ParsedResponse.objects`). Parsing
never raises: a malformed response is data (a failed format check, a missing answer, an invalid field), each with a
reason that rewards log and counters aggregate. Coordinates are validated in the model's own convention (pixels, or
Qwen3-VL's 0-1000) and returned in pixels of the image the model saw (:mod:`recipe.task.coordinates`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from recipe.task.coordinates import Coordinates
from reward_server.masks import MODEL_SIZE
from reward_server.validation import Box, Point, check_box, check_point

T = TypeVar("T")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
_DEFAULT_HW = (MODEL_SIZE, MODEL_SIZE)
_MISSING = object()


@dataclass(frozen=True)
class Field(Generic[T]):
    """A typed answer field: its value, or the reason it is invalid.

    ``ok`` with ``value is None`` means an explicit JSON ``null`` where one is allowed (a refinement point).
    """

    value: T | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _invalid(reason: str) -> Field[Any]:
    return Field(error=reason)


def validate_box(
    value: Any, image_hw: tuple[int, int] = _DEFAULT_HW, coordinates: Coordinates = Coordinates.PIXELS
) -> Field[Box]:
    """A valid box: 4 finite numbers with ``x1 < x2`` and ``y1 < y2`` after clipping to the image (to the range of
    ``coordinates``).

    Returns:
        The clipped box in pixels of the ``image_hw`` image, or the reason it is invalid.
    """
    box, error = check_box(value, coordinates.extent(image_hw))
    return Field(error=error) if box is None else Field(value=coordinates.to_pixels(box, image_hw))


def validate_point(
    value: Any,
    image_hw: tuple[int, int] = _DEFAULT_HW,
    allow_null: bool = False,
    coordinates: Coordinates = Coordinates.PIXELS,
) -> Field[Point]:
    """A valid point: 2 finite numbers inside the image, ``0 <= x < W`` and ``0 <= y < H`` (it lies on a pixel; in
    the range of ``coordinates``).

    Args:
        value: The JSON value.
        image_hw: ``(H, W)`` of the image the coordinates refer to.
        allow_null: Whether JSON ``null`` is valid (refinement answers); it yields ``ok`` with value None.
        coordinates: The model's convention; the point is returned in pixels of the ``image_hw`` image.
    """
    if value is None and allow_null:
        return Field()
    point, error = check_point(value, coordinates.extent(image_hw))
    return Field(error=error) if point is None else Field(value=coordinates.to_pixels(point, image_hw))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    counts = Counter(key for key, _ in pairs)
    duplicates = sorted(key for key, count in counts.items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate keys {duplicates}")
    return dict(pairs)


def _strip_fence(text: str) -> str:
    """Removes one surrounding Markdown code fence (```json ... ``` or ``` ... ```), if present."""
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        inner = text[3:-3]
        if inner.startswith("json"):
            inner = inner[4:]
        return inner.strip()
    return text


def _tag_rule_error(text: str, reasoning: bool = True) -> str | None:
    """Why ``text`` is not exactly ``<think>...</think>`` then ``<answer>...</answer>`` (or, without ``reasoning``,
    exactly one ``<answer>...</answer>`` and no think tags), or None when it is."""
    if not reasoning:
        for tag, expected in ((THINK_OPEN, 0), (THINK_CLOSE, 0), (ANSWER_OPEN, 1), (ANSWER_CLOSE, 1)):
            if (count := text.count(tag)) != expected:
                return f"{tag} appears {count} times, expected {expected} (answer-only format)"
        start, end = text.index(ANSWER_OPEN), text.index(ANSWER_CLOSE)
        if end < start or text[:start].strip() or text[end + len(ANSWER_CLOSE) :].strip():
            return "text outside the <answer> block (answer-only format)"
        return None
    for tag in _TAGS:
        count = text.count(tag)
        if count != 1:
            return f"{tag} appears {count} times, expected once"
    t_open, t_close = text.index(THINK_OPEN), text.index(THINK_CLOSE)
    a_open, a_close = text.index(ANSWER_OPEN), text.index(ANSWER_CLOSE)
    if not t_open < t_close < a_open < a_close:
        return "tags out of order, expected <think>...</think><answer>...</answer>"
    outside = (text[:t_open], text[t_close + len(THINK_CLOSE) : a_open], text[a_close + len(ANSWER_CLOSE) :])
    if any(part.strip() for part in outside):
        return "text outside the <think> and <answer> blocks"
    return None


def _answer_block(text: str) -> tuple[str | None, str | None]:
    """The content of the single ``<answer>`` block, or the reason there is none."""
    opens, closes = text.count(ANSWER_OPEN), text.count(ANSWER_CLOSE)
    if opens == 0 or closes == 0:
        return None, "no <answer>...</answer> block"
    if opens > 1 or closes > 1:
        return None, "more than one <answer> or </answer> tag"
    start, end = text.index(ANSWER_OPEN) + len(ANSWER_OPEN), text.index(ANSWER_CLOSE)
    if end < start:
        return None, "</answer> before <answer>"
    return text[start:end], None


def _load_json(content: str) -> tuple[Any, str | None]:
    """The answer's JSON value (any type), or :data:`_MISSING` and the reason it does not parse."""
    try:
        value = json.loads(_strip_fence(content), parse_constant=_reject_constant, object_pairs_hook=_unique_object)
    except (ValueError, RecursionError) as err:
        return _MISSING, f"answer is not valid JSON: {str(err)[:120]}"
    return value, None


MAX_OBJECTS = 20
"""How many objects a generalized answer may list (``max_objects`` of :meth:`ParsedResponse.objects`)."""


@dataclass(frozen=True)
class AnsweredObject:
    """One object of a generalized answer, in pixels of the image the model saw.

    Attributes:
        box: Its ``bbox_2d``.
        point: Its ``point_2d`` (SAM-R1), or None where the format has none.
        label: Its ``label`` (SAM-R1), or None where the format has none.
    """

    box: Box
    point: Point | None = None
    label: str | None = None


@dataclass(frozen=True)
class ParsedResponse:
    """A response split into its reasoning-format verdict and its JSON answer.

    Attributes:
        format_ok: Whether the whole response is ``<think>...</think>`` then ``<answer>...</answer>`` (whitespace
            around and between allowed), each tag exactly once.
        format_error: Why the tag rule fails, or None.
        answer: The JSON object inside the single ``<answer>`` block, or None.
        answer_error: Why there is no answer, or None.
        image_hw: ``(H, W)`` of the image the coordinates refer to (840x840 model space by default).
        coordinates: The model's convention; every box and point is returned in pixels of that image.
        json_value: The answer's JSON value whatever its type (a generalized answer is a list), or a private
            sentinel when there is none (:attr:`has_json`).
    """

    format_ok: bool
    format_error: str | None
    answer: dict[str, Any] | None
    answer_error: str | None
    image_hw: tuple[int, int] = _DEFAULT_HW
    coordinates: Coordinates = Coordinates.PIXELS
    json_value: Any = _MISSING

    @property
    def has_json(self) -> bool:
        """Whether the ``<answer>`` block held valid JSON (of any type)."""
        return self.json_value is not _MISSING

    def _get(self, key: str) -> Any:
        return self.answer.get(key, _MISSING) if self.answer is not None else _MISSING

    def _field(self, key: str) -> tuple[Any, Field[Any] | None]:
        if self.answer is None:
            return None, _invalid(self.answer_error or "no answer")
        value = self._get(key)
        if value is _MISSING:
            return None, _invalid(f"missing key {key!r}")
        return value, None

    def bbox_2d(self) -> Field[Box]:
        """The ``bbox_2d`` box, clipped to the image."""
        value, failure = self._field("bbox_2d")
        return failure or validate_box(value, self.image_hw, self.coordinates)

    def point_2d(self) -> Field[Point]:
        """The ``point_2d`` point (SAM-R1's positive click)."""
        value, failure = self._field("point_2d")
        return failure or validate_point(value, self.image_hw, coordinates=self.coordinates)

    def label(self) -> Field[str]:
        """The ``label`` flag: a non-empty string."""
        value, failure = self._field("label")
        if failure:
            return failure
        if not isinstance(value, str) or not value.strip():
            return _invalid("label must be a non-empty string")
        return Field(value=value.strip())

    def pos_point(self) -> Field[Point]:
        """The ``pos_point`` refinement click (false-negative area); ``null`` is valid and means no click."""
        value, failure = self._field("pos_point")
        return failure or validate_point(value, self.image_hw, allow_null=True, coordinates=self.coordinates)

    def neg_point(self) -> Field[Point]:
        """The ``neg_point`` refinement click (false-positive area); ``null`` is valid and means no click."""
        value, failure = self._field("neg_point")
        return failure or validate_point(value, self.image_hw, allow_null=True, coordinates=self.coordinates)

    def clicks(self) -> tuple[Point | None, Point | None] | None:
        """A refinement answer's ``(pos_point, neg_point)``, None for a null click; None when either is invalid."""
        pos, neg = self.pos_point(), self.neg_point()
        return (pos.value, neg.value) if pos.ok and neg.ok else None

    def objects(
        self, with_point: bool = False, with_label: bool = False, max_objects: int = MAX_OBJECTS
    ) -> Field[tuple[AnsweredObject, ...]]:
        """A generalized answer: a JSON list of objects, each with a valid ``bbox_2d`` (and ``point_2d`` and a
        non-empty ``label`` when asked for), ``[]`` for "no such object".

        Invalid (with the first reason): an answer that is not a list, more than ``max_objects`` entries, an entry
        that is not an object or has an invalid field, and two entries with the same box.
        """
        if self.json_value is _MISSING:
            return _invalid(self.answer_error or "no answer")
        if not isinstance(self.json_value, list):
            return _invalid(f"answer is JSON {_json_type(self.json_value)}, expected a list of objects")
        if len(self.json_value) > max_objects:
            return _invalid(f"{len(self.json_value)} objects, at most {max_objects}")
        found: list[AnsweredObject] = []
        for number, entry in enumerate(self.json_value, 1):
            if not isinstance(entry, dict):
                return _invalid(f"object {number} is JSON {_json_type(entry)}, expected an object")
            one = ParsedResponse(True, None, entry, None, self.image_hw, self.coordinates, entry)
            fields = {"box": one.bbox_2d()}
            if with_point:
                fields["point"] = one.point_2d()
            if with_label:
                fields["label"] = one.label()
            for field in fields.values():
                if not field.ok:
                    return _invalid(f"object {number}: {field.error}")
            item = AnsweredObject(**{name: field.value for name, field in fields.items()})
            if any(item.box == other.box for other in found):
                return _invalid(f"object {number} repeats the box of an earlier object")
            found.append(item)
        return Field(value=tuple(found))


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def parse_response(
    text: Any,
    image_hw: tuple[int, int] = _DEFAULT_HW,
    reasoning: bool = True,
    coordinates: Coordinates = Coordinates.PIXELS,
) -> ParsedResponse:
    """Parses a model response; never raises.

    Args:
        text: The decoded response (anything else yields a failed parse).
        image_hw: ``(H, W)`` of the image that the answer's coordinates refer to.
        reasoning: The tag rule asks for ``<think>`` before ``<answer>``; False is the answer-only format of the
            no-chain-of-thought ablation.
        coordinates: The model's convention (:func:`recipe.task.coordinates.model_coordinates`).

    Returns:
        The tag-rule verdict and the answer object, each with the reason when it fails.
    """
    if not isinstance(text, str):
        reason = f"response is {type(text).__name__}, not text"
        return ParsedResponse(False, reason, None, reason, image_hw, coordinates)
    format_error = _tag_rule_error(text, reasoning)
    content, answer_error = _answer_block(text)
    value = _MISSING
    if content is not None:
        value, answer_error = _load_json(content)
    answer = value if isinstance(value, dict) else None
    if value is not _MISSING and answer is None:
        answer_error = f"answer is JSON {type(value).__name__}, expected an object"
    return ParsedResponse(format_error is None, format_error, answer, answer_error, image_hw, coordinates, value)
