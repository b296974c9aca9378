"""The base models' coordinate conventions: Qwen3-VL's 0-1000 against its official mapping, and one answer written
in either convention reaching SAM2 and the rewards as the same prompt and the same score."""

import asyncio
import json

import numpy as np
import pytest

from recipe.samr1.reward import compute_score
from recipe.task.answer import parse_response
from recipe.task.coordinates import Coordinates, coordinates_of, model_coordinates
from recipe.task.episodes import Episode
from recipe.veteran.reward_formulas import VeteranRewardConfig
from recipe.veteran.task_scoring import parse_answer, score_grounding
from reward_server.masks import encode_rle
from reward_server.protocol import ImageRef

from support.fake_sam import FakeSam


def official_qwen3_vl(pred: list[float], width: int, height: int) -> np.ndarray:
    """Qwen3-VL's evaluation (QwenLM/Qwen3-VL, evaluation/ODinW-13/run_odinw.py):
    ``pred_bboxes / 1000 * np.array([img_w, img_h, img_w, img_h])``."""
    return np.array(pred, dtype=float).reshape(-1, 4) / 1000 * np.array([width, height, width, height])


def test_relative_coordinates_map_as_qwen3_vls_evaluation_does():
    # By hand: x = 250 / 1000 * 640 = 160, y = 500 / 1000 * 480 = 240; x2 = 750 / 1000 * 640 = 480, y2 = 360.
    box = [250, 500, 750, 750]
    pixels = Coordinates.RELATIVE.to_pixels(box, (480, 640))
    assert pixels == (160.0, 240.0, 480.0, 360.0)
    assert np.allclose(pixels, official_qwen3_vl(box, 640, 480)[0])
    assert Coordinates.RELATIVE.from_pixels(pixels, (480, 640)) == pytest.approx(box)
    assert Coordinates.PIXELS.to_pixels(box, (480, 640)) == tuple(map(float, box))


def test_the_parser_validates_in_the_models_range_and_answers_in_pixels():
    relative = '<think>x</think><answer>{"bbox_2d": [100, 200, 1200, 750], "point_2d": [999, 0]}</answer>'
    parsed = parse_response(relative, coordinates=Coordinates.RELATIVE)
    assert parsed.bbox_2d().value == pytest.approx((84.0, 168.0, 840.0, 630.0))  # clipped to 1000, then scaled
    assert parsed.point_2d().value == pytest.approx((839.16, 0.0))
    # 1000 is the image's right edge, not a pixel on it; 900 is a pixel of Qwen3-VL's range and not of Qwen2.5-VL's.
    edge = parse_response('<answer>{"point_2d": [1000, 5]}</answer>', coordinates=Coordinates.RELATIVE)
    assert not edge.point_2d().ok and "1000x1000" in edge.point_2d().error
    inside = '<answer>{"point_2d": [900, 5]}</answer>'
    assert parse_response(inside, coordinates=Coordinates.RELATIVE).point_2d().ok
    assert not parse_response(inside).point_2d().ok


def test_each_checkpoint_names_its_convention(tiny_qwen_path, tiny_qwen3_path):
    assert model_coordinates(tiny_qwen_path) is Coordinates.PIXELS
    assert model_coordinates(tiny_qwen3_path) is Coordinates.RELATIVE
    assert coordinates_of("qwen2_vl") is Coordinates.RELATIVE  # Qwen2-VL grounded in 0-1000 before Qwen2.5-VL
    with pytest.raises(ValueError, match=r"llava.*known"):
        coordinates_of("llava")


# One answer: the box [84, 168, 420, 630] and the click (252, 399) of the 840x840 model image, in each convention.
QWEN2_5 = {"bbox_2d": [84, 168, 420, 630], "point_2d": [252, 399], "label": "the dog"}
QWEN3 = {"bbox_2d": [100, 200, 500, 750], "point_2d": [300, 475], "label": "the dog"}
TRUTH = np.zeros((840, 840), bool)
TRUTH[200:600, 100:400] = True


def _response(answer: dict) -> str:
    return f"<think>the dog on the left</think><answer>{json.dumps(answer)}</answer>"


def test_samr1_sends_the_same_prompt_and_scores_the_same_in_either_convention(tiny_qwen_path, tiny_qwen3_path):
    results, prompts = [], []
    for answer, model in ((QWEN2_5, tiny_qwen_path), (QWEN3, tiny_qwen3_path)):
        sam = FakeSam(TRUTH[::-1].copy(), truth=TRUTH)
        truth = {"mask": encode_rle(TRUTH)}
        image = {"image": b"jpeg"}
        results.append(
            asyncio.run(compute_score("x", _response(answer), truth, image, model_path=model, sam_client=sam))
        )
        prompts.append(sam.prompts)
    assert prompts[0] == prompts[1] and len(prompts[0]) == 1
    assert prompts[0][0].box == (84.0, 168.0, 420.0, 630.0) and prompts[0][0].points == ((252.0, 399.0),)
    assert results[0] == results[1] and results[0]["tiered"] > 0


def test_veteran_sends_the_same_prompts_and_scores_the_same_in_either_convention():
    config = VeteranRewardConfig()
    truth = {"mask": encode_rle(TRUTH), "box": [100, 200, 400, 600]}
    grounding = []
    for answer, coordinates in ((QWEN2_5, Coordinates.PIXELS), (QWEN3, Coordinates.RELATIVE)):
        sam = FakeSam(TRUTH, truth=TRUTH, edge_iou=0.9)
        parsed = parse_answer("grounding", _response({"bbox_2d": answer["bbox_2d"]}), config, coordinates)
        info = asyncio.run(score_grounding(parsed, truth, ImageRef.of(np.zeros((840, 840, 3), np.uint8)), sam, config))
        grounding.append((sam.prompts, info))
    assert grounding[0] == grounding[1] and grounding[0][1]["box"] > 0
    # The workflow's refinement click: (252, 399) in pixels is (300, 475) in 0-1000.
    clicks = []
    for answer, coordinates in ((QWEN2_5, Coordinates.PIXELS), (QWEN3, Coordinates.RELATIVE)):
        image = np.zeros((840, 840, 3), np.uint8)
        episode = Episode("q", image, grounding_cot=True, mask_cot=True, coordinates=coordinates)
        boxes = episode.observe_response(_response({"bbox_2d": answer["bbox_2d"]}))
        episode.observe_mask(asyncio.run(FakeSam(TRUTH).segment(ImageRef.of(image), boxes, return_logits=True)))
        (click,) = episode.observe_response(_response({"pos_point": answer["point_2d"], "neg_point": None}))
        clicks.append(click)
    assert clicks[0].points == clicks[1].points == ((252.0, 399.0),) and clicks[0].box == clicks[1].box


@pytest.fixture(scope="module")
def thinking_qwen3(tiny_qwen3_path, tmp_path_factory) -> str:
    """The tiny Qwen3-VL with a Thinking model's generation prompt, which opens the thinking block for the model."""
    import shutil

    path = tmp_path_factory.mktemp("thinking") / "qwen3_vl_thinking"
    shutil.copytree(tiny_qwen3_path, path)
    template = path / "chat_template.jinja"
    instruct = "{{- '<|im_start|>assistant\n' }}"
    assert instruct in template.read_text()
    template.write_text(template.read_text().replace(instruct, "{{- '<|im_start|>assistant\n<think>\n' }}"))
    return str(path)


def test_the_templates_opening_of_the_turn_is_read_from_the_checkpoint(tiny_qwen_path, tiny_qwen3_path, thinking_qwen3):
    from recipe.task.prompts import checkpoint_opening

    assert checkpoint_opening(tiny_qwen_path) == checkpoint_opening(tiny_qwen3_path) == ""
    assert checkpoint_opening(thinking_qwen3) == "<think>\n"


def test_a_thinking_models_answer_meets_the_tag_rule_with_the_think_its_template_opened(
    tiny_qwen3_path, thinking_qwen3
):
    """The Thinking model's tokens start inside the block its template opened: ``...</think><answer>...``."""
    continued = f"the dog on the left</think><answer>{json.dumps(QWEN3)}</answer>"
    scores = {}
    for name, model in (("thinking", thinking_qwen3), ("instruct", tiny_qwen3_path)):
        sam = FakeSam(TRUTH, truth=TRUTH)
        truth, image = {"mask": encode_rle(TRUTH)}, {"image": b"jpeg"}
        scores[name] = asyncio.run(compute_score("x", continued, truth, image, model_path=model, sam_client=sam))
    assert scores["thinking"]["reasoning_format"] == 1.0 and scores["thinking"]["well_formed"] == 1.0
    assert scores["instruct"]["reasoning_format"] == -1.0  # without the template's <think> the tag rule fails
    assert scores["thinking"]["tiered"] == scores["instruct"]["tiered"] == 4.0
