"""The dataset row contract: what data_prep writes, and training and evaluation read, in one place.

A row is one verl ``RLHFDataset`` record (a dict, as ``pyarrow`` reads it or verl hands its fields to an agent loop
or a reward function). The views here name every column and field once, so no writer or reader spells a key:
:class:`Row` (the columns), :class:`RewardModel`, :class:`GroundTruth` (the masks, box and SAM-Veteran's task
fields), :class:`Region` (an auxiliary error region) and :class:`ExtraInfo` (question, task, dataset, key, ids).
``data_prep.schema`` gives the same fields their parquet types, in the same order (tests check both).

The task names, each task's agent loop, the case names, the Good-Enough threshold and the ignore label live here
too: the row values that training, evaluation and data preparation must agree on (docs/conventions.md).

A view wraps the dict without copying it. A field the dict leaves out reads as None, like a null one (verl and the
tests hand over partial dicts); every row data_prep writes holds every field.
Writers build a view with ``build`` (every field present, None unless given) and change one with ``replace``
(a new dict; the old one is untouched); ``to_dict`` is the plain dict ``pyarrow`` writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Self, TypeVar, overload

T = TypeVar("T")

Rle = dict[str, Any]
"""A COCO RLE mask, ``{"size": [H, W], "counts": str}`` (``reward_server.masks.encode_rle`` / ``decode_rle``)."""

IGNORE_LABEL = 255
"""Label mask value of ignored pixels (ReasonSeg's "ignore" regions; LISA's ``ignore_index``): 0 is background,
1 the target."""

# Task names (``extra_info.task``; ``recipe.task.prompts`` selects its template by them).
SAMR1 = "samr1"
GROUNDING = "grounding"
MASK_COMPREHENSION = "mask_comprehension"
AUXILIARY = "auxiliary"
WORKFLOW = "workflow"

TASK_AGENTS: Mapping[str, str] = {
    SAMR1: "single_turn_agent",  # verl's own loop
    GROUNDING: "veteran_grounding",
    MASK_COMPREHENSION: "veteran_mask_comprehension",
    AUXILIARY: "veteran_auxiliary",
    WORKFLOW: "veteran_workflow",
}
"""The agent loop (``agent_name``) of each task's rows; verl picks the loop of each row by it."""

# Cases (``ground_truth.case``). Mask comprehension: the shown mask is Good Enough or needs refinement (A.4).
GOOD_ENOUGH = "good_enough"
NEED_REFINEMENT = "need_refinement"
# Auxiliary: the errors of the corrupted mask, a false-positive (included) and/or false-negative (excluded) region.
NO_ERROR = "none"
FALSE_POSITIVE = "fp"
FALSE_NEGATIVE = "fn"
BOTH_ERRORS = "both"
MASK_COMPREHENSION_CASES = (GOOD_ENOUGH, NEED_REFINEMENT)
AUXILIARY_CASES = (NO_ERROR, FALSE_POSITIVE, FALSE_NEGATIVE, BOTH_ERRORS)

GOOD_ENOUGH_IOU = 1.0
"""SAM-Veteran: a mask is Good Enough when its edge-excluded IoU with the ground truth is 1 (section 4.2, A.4)."""
NEED_REFINEMENT_IOU = 0.9
"""SAM-Veteran's data: a mask needs refinement when its edge-excluded IoU is below 0.9 (A.4)."""


def is_good_enough(edge_iou: float) -> bool:
    """Whether a mask of edge-excluded IoU ``edge_iou`` is Good Enough (:data:`GOOD_ENOUGH_IOU` or above)."""
    return edge_iou >= GOOD_ENOUGH_IOU


ABILITY = "reasoning_segmentation"
"""The ``ability`` of every row."""
REWARD_STYLE = "rule"
"""The ``reward_model.style`` of every row (verl's rule-based reward)."""
IMAGE_BYTES = "bytes"
"""The key of an image's encoded bytes in an ``images`` entry (verl's image format)."""
REWARD_IMAGE = "image"
"""The ``extra_info`` key under which the ``sam_image`` reward manager hands the model's image to a reward function.
Not a column: it is added at reward time."""


class _Field(Generic[T]):
    """One field of a view: reading it on a view gives the value (None when absent or null; a nested struct as its
    view), on the class the field itself (its ``name`` is the column's).

    Args:
        convert: Wraps a non-null value (a nested struct's view); None keeps the value as stored.
    """

    def __init__(self, convert: Callable[[Any], T] | None = None) -> None:
        self.convert = convert
        self.name = ""

    def __set_name__(self, owner: type[_Struct], name: str) -> None:
        self.name = name
        # Each view lists its own fields, in the order its class body declares them (the schema's order).
        owner.FIELDS = (*owner.__dict__.get("FIELDS", ()), name)

    @overload
    def __get__(self, view: None, owner: type) -> _Field[T]: ...

    @overload
    def __get__(self, view: _Struct, owner: type) -> T: ...

    def __get__(self, view: _Struct | None, owner: type) -> T | _Field[T]:
        if view is None:
            return self
        value = view.data.get(self.name)
        return value if value is None or self.convert is None else self.convert(value)


@dataclass(frozen=True)
class _Struct:
    """A read-only view of one struct of the row schema; ``FIELDS`` lists its fields in schema order.

    Attributes:
        data: The wrapped dict.
    """

    FIELDS: ClassVar[tuple[str, ...]] = ()
    data: Mapping[str, Any]

    @classmethod
    def of(cls, value: Self | Mapping[str, Any]) -> Self:
        """``value`` as this view: a view as it is, a dict wrapped."""
        return value if isinstance(value, cls) else cls(value)

    @classmethod
    def build(cls, **values: Any) -> Self:
        """A new struct holding every field, None unless given; nested views are stored as their dicts.

        Raises:
            TypeError: For a name that is not a field.
        """
        cls._check_names(values)
        return cls({name: _plain(values.get(name)) for name in cls.FIELDS})

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (a new top-level dict; values not changed are shared, not copied).

        Raises:
            TypeError: For a name that is not a field.
        """
        self._check_names(changes)
        return type(self)({**self.data, **{name: _plain(value) for name, value in changes.items()}})

    def to_dict(self) -> dict[str, Any]:
        """The struct as the plain dict ``pyarrow`` writes."""
        return dict(self.data)

    @classmethod
    def _check_names(cls, values: Mapping[str, Any]) -> None:
        unknown = sorted(set(values) - set(cls.FIELDS))
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {unknown}; its fields are {list(cls.FIELDS)}")


def _plain(value: Any) -> Any:
    if isinstance(value, list):  # a list of structs (``objects``)
        return [_plain(item) for item in value]
    return value.to_dict() if isinstance(value, _Struct) else value


class Region(_Struct):
    """An auxiliary row's error region (``ground_truth.false_positive`` / ``false_negative``).

    Attributes:
        mask: The region at 840 (COCO RLE).
        center: ``(x, y)`` a click should aim at: the centroid, or the region pixel farthest from its boundary when
            the centroid falls outside (``reward_server.masks.region_center``).
    """

    mask = _Field[Rle]()
    center = _Field[list[float]]()


class Target(_Struct):
    """One object of a generalized row's target (``ground_truth.objects``).

    Attributes:
        mask: The object at 840 (COCO RLE).
        box: Its tight ``[x1, y1, x2, y2]`` box at 840.
    """

    mask = _Field[Rle]()
    box = _Field[list[float]]()


def _targets(value: list[Any]) -> list[Target]:
    return [Target.of(item) for item in value]


class GroundTruth(_Struct):
    """``reward_model.ground_truth``: the target at 840 (model space) and at the original resolution, and the task
    fields of SAM-Veteran's rows (null in other rows). ``recipe.task.labels.label_mask`` reads it as labels.

    A *generalized* row (gRefCOCO, or custom data with ``masks``) lists its objects in ``objects``, possibly none:
    its prompt asks for a list of objects, and rewards and evaluation read the answer as one
    (docs/conventions.md, Several objects or none). ``mask`` and ``box`` then hold the union and its box. The
    papers' rows leave ``objects`` null: one target, ``mask`` and ``box``.

    Attributes:
        mask: The target at 840x840.
        ignore: Ignored pixels at 840 (ReasonSeg), or None.
        box: Tight ``[x1, y1, x2, y2]`` box of the target at 840, or None (no target).
        orig_size: ``[H, W]`` of the original image.
        orig_mask: The target at the original resolution.
        orig_ignore: Ignored pixels at the original resolution, or None.
        init_mask: The mask a refinement task shows (SAM2's mask of the GT box, or the corrupted GT).
        init_edge_iou: Mask comprehension: the edge-excluded IoU of ``init_mask``, the IoU gain's baseline.
        init_logits: Mask comprehension: SAM2's low-res logits of ``init_mask``
            (``recipe.task.stored_logits``), a refinement's ``mask_input``.
        case: One of :data:`MASK_COMPREHENSION_CASES` or :data:`AUXILIARY_CASES`.
        false_positive: Auxiliary: the wrongly included region.
        false_negative: Auxiliary: the wrongly excluded region.
        objects: A generalized row's objects (each its mask and box at 840; empty: no target), or None.
    """

    mask = _Field[Rle | None]()
    ignore = _Field[Rle | None]()
    box = _Field[list[float] | None]()
    orig_size = _Field[list[int] | None]()
    orig_mask = _Field[Rle | None]()
    orig_ignore = _Field[Rle | None]()
    init_mask = _Field[Rle | None]()
    init_edge_iou = _Field[float | None]()
    init_logits = _Field[dict[str, Any] | None]()
    case = _Field[str | None]()
    false_positive = _Field[Region | None](Region)
    false_negative = _Field[Region | None](Region)
    objects = _Field[list[Target] | None](_targets)

    @property
    def generalized(self) -> bool:
        """Whether the row lists its objects (its answer is a list of objects, possibly empty)."""
        return self.objects is not None

    def targets(self) -> list[Target]:
        """The objects an answer is matched to: a generalized row's ``objects``, else the one target (none when the
        row has no box)."""
        if self.objects is not None:
            return self.objects
        return [] if self.box is None else [Target.build(mask=self.mask, box=self.box)]

    @property
    def good_enough(self) -> bool:
        """Whether a mask-comprehension row's shown mask is Good Enough (its case, set by :func:`is_good_enough`)."""
        return self.case == GOOD_ENOUGH


class RewardModel(_Struct):
    """``reward_model``: verl's reward style and the ground truth.

    Attributes:
        style: :data:`REWARD_STYLE`.
        ground_truth: The ground truth.
    """

    style = _Field[str | None]()
    ground_truth = _Field[GroundTruth | None](GroundTruth)


class ExtraInfo(_Struct):
    """``extra_info``: the sample's identity and question (verl hands it to rewards and agent loops).

    Attributes:
        index: The row's position in its build.
        split: ``train``, ``val`` or ``test``.
        question: The referring expression or question.
        dataset: The source dataset (``refcocog``, ``reasonseg``, a custom name).
        task: One of the task names (:data:`TASK_AGENTS`' keys).
        key: The sample's key in its source (``<dataset>/<split>/...``).
        image_id: The source's image id, or None.
        ann_id: The source's annotation id, or None.
        ref_id: The source's referring-expression id, or None.
        sent_id: The source's sentence id, or None.
    """

    index = _Field[int | None]()
    split = _Field[str | None]()
    question = _Field[str | None]()
    dataset = _Field[str | None]()
    task = _Field[str | None]()
    key = _Field[str | None]()
    image_id = _Field[int | None]()
    ann_id = _Field[int | None]()
    ref_id = _Field[int | None]()
    sent_id = _Field[int | None]()


SOURCE_IDS = (ExtraInfo.image_id.name, ExtraInfo.ann_id.name, ExtraInfo.ref_id.name, ExtraInfo.sent_id.name)
"""The ``extra_info`` fields that carry a source sample's ids."""


class Row(_Struct):
    """One dataset row (its columns, in the order of ``data_prep.schema.ROW``).

    Attributes:
        data_source: ``<dataset>_<split>`` (the evaluation table's column).
        prompt: The chat messages (``recipe.task.prompts.build_messages``).
        images: The 840x840 model image, ``[{"bytes": JPEG}]`` (:func:`image_entry`).
        ability: :data:`ABILITY`.
        reward_model: Reward style and ground truth.
        extra_info: Identity and question.
        agent_name: The row's agent loop (:data:`TASK_AGENTS`).
        orig_image: Evaluation rows: the original image file's bytes; else None.
    """

    data_source = _Field[str | None]()
    prompt = _Field[list[dict[str, Any]] | None]()
    images = _Field[list[dict[str, bytes]] | None]()
    ability = _Field[str | None]()
    reward_model = _Field[RewardModel | None](RewardModel)
    extra_info = _Field[ExtraInfo | None](ExtraInfo)
    agent_name = _Field[str | None]()
    orig_image = _Field[bytes | None]()

    @property
    def ground_truth(self) -> GroundTruth:
        """``reward_model.ground_truth``.

        Raises:
            KeyError: When the row has none.
        """
        truth = self.reward_model.ground_truth if self.reward_model is not None else None
        if truth is None:
            raise KeyError("the row has no reward_model.ground_truth")
        return truth

    @property
    def image_bytes(self) -> bytes:
        """The encoded 840x840 model image (the first of ``images``).

        Raises:
            KeyError, IndexError, TypeError: When the row has no image.
        """
        return self.data[Row.images.name][0][IMAGE_BYTES]

    def with_ground_truth(self, truth: GroundTruth) -> Row:
        """A copy whose ``reward_model.ground_truth`` is ``truth`` (the style kept)."""
        return self.replace(reward_model=RewardModel(self.data[Row.reward_model.name]).replace(ground_truth=truth))


def image_entry(data: bytes) -> dict[str, bytes]:
    """One ``images`` entry of encoded image bytes."""
    return {IMAGE_BYTES: data}


def reward_image(extra_info: Mapping[str, Any] | None) -> Any:
    """The model's image the ``sam_image`` reward manager added to a reward function's ``extra_info``, or None."""
    return (extra_info or {}).get(REWARD_IMAGE)


def with_reward_image(extra_info: Mapping[str, Any] | None, image: Any) -> dict[str, Any]:
    """A copy of a row's ``extra_info`` with the model's image added (:func:`reward_image` reads it back)."""
    return {**(extra_info or {}), REWARD_IMAGE: image}
