"""Segmenting one image (``recipe.evaluate.infer``) against the evaluator's own records of the same sample.

References: the evaluator's records of a data_prep row (its final mask decoded with pycocotools, its prompts, the
images its policy was shown), data_prep's stored 840x840 image, and the command line's exit status and stderr.
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import recipe.evaluate.policies
from recipe.evaluate.config import eval_config
from recipe.evaluate.infer import InferError, load_image, main, model_image, segment
from recipe.evaluate.records import read_records
from recipe.evaluate.runner import evaluate
from recipe.task.panels import draw_step
from recipe.verl_runtime.compose import compose_recipe

from support.scripted_answers import coco_decode, scripts

ROOT = Path(__file__).resolve().parents[1]


class TurnPolicy:
    """Answers its n-th call with ``script[n]`` (the last entry from then on) and keeps the images it was shown."""

    seconds = 0.0

    def __init__(self, script):
        self.script, self.images = script, []

    async def generate(self, batch):
        (messages,) = batch
        self.images.append(np.asarray(messages[0]["content"][0]["image"]))
        return [self.script[min(len(self.images), len(self.script)) - 1]]


@pytest.fixture(scope="module")
def row(eval_sets):
    """The first RefCOCOg test row, as data_prep stored it."""
    path = eval_sets / "refcocog_test.parquet"
    return path, pq.read_table(path).to_pylist()[0]


def test_the_model_sees_the_image_data_prep_stores(eval_sets):
    for path in sorted(eval_sets.glob("*.parquet")):
        for stored in pq.read_table(path).to_pylist():
            with Image.open(io.BytesIO(stored["images"][0]["bytes"])) as image:
                expected = np.array(image.convert("RGB"))
            assert np.array_equal(model_image(load_image(stored["orig_image"])), expected)


@pytest.mark.parametrize("mode", ["samr1", "veteran"])
def test_the_written_mask_is_the_evaluators_for_the_same_sample(
    mode, row, tmp_path, monkeypatch, capsys, tiny_qwen_path
):
    path, stored = row
    script = scripts(stored)[mode]
    evaluator_policy = TurnPolicy(script)
    overrides = [f"mode={mode}", "reward_server=tiny_cpu", f"data.files=[{path}]", "data.limit=1", "report=false"]
    cfg = eval_config(compose_recipe("evaluate", [*overrides, f"output_dir={tmp_path / 'eval'}"]))
    evaluate(cfg, policy=evaluator_policy)
    (record,) = read_records(tmp_path / "eval").values()
    expected = coco_decode([step for step in record["steps"] if "mask" in step][-1]["mask"])
    assert expected.any() and not expected.all(), "the check needs a mask that is neither empty nor full"

    image_path = tmp_path / "photo.jpg"
    image_path.write_bytes(stored["orig_image"])
    infer_policy = TurnPolicy(script)
    monkeypatch.setattr(recipe.evaluate.policies, "build_policy", lambda cfg, mode: infer_policy)
    out_dir = tmp_path / "infer"
    # The scripted policy answers; the checkpoint's config names the convention its coordinates are read in.
    argv = ["--model", tiny_qwen_path, "--image", str(image_path), "--question", stored["extra_info"]["question"]]
    assert main([*argv, "--mode", mode, "--out", str(out_dir), "--sam-preset", "tiny_cpu"]) == 0

    written = coco_decode(json.loads((out_dir / "mask.json").read_text()))
    assert np.array_equal(written, expected)
    assert np.array_equal(np.array(Image.open(out_dir / "mask.png")) > 0, expected)
    assert len(infer_policy.images) == len(evaluator_policy.images) == len(script)
    for shown, reference in zip(infer_policy.images, evaluator_policy.images, strict=True):
        assert np.array_equal(shown, reference)  # the 840 image, then the same green overlays
    original = np.array(Image.open(image_path).convert("RGB"))
    assert sorted(p.name for p in out_dir.glob("step-*.png")) == [f"step-{i}.png" for i in range(len(script))]
    for index, step in enumerate(record["steps"]):
        assert np.array_equal(np.array(Image.open(out_dir / f"step-{index}.png")), draw_step(original, step))
    printed = capsys.readouterr().out
    assert printed.count("reasoning: it is near the middle") == len(script)
    assert json.dumps(record["steps"][0]["prompt"]) in printed

    result = segment(
        image_path,
        stored["extra_info"]["question"],
        mode,
        overrides=["reward_server=tiny_cpu"],
        policy=TurnPolicy(script),
    )
    assert [step.prompt for step in result.steps] == [step["prompt"] for step in record["steps"]]
    assert [step.answer for step in result.steps] == [step["answer"] for step in record["steps"]]
    assert result.termination == record["termination"] and np.array_equal(result.mask, expected)


def test_a_model_without_a_well_formed_answer_gets_no_mask(row):
    _, stored = row
    result = segment(
        stored["orig_image"],
        "the cat",
        "veteran",
        overrides=["reward_server=tiny_cpu"],
        policy=TurnPolicy(['<think>no idea</think><answer>{"bbox_2d": [5, 5]}</answer>']),
    )
    assert result.mask is None and result.termination == "invalid_grounding"
    assert "bbox_2d" in result.failure and result.steps[0].reasoning == "no idea"
    with pytest.raises(InferError, match="empty"):
        segment(stored["orig_image"], "  ", policy=TurnPolicy(["x"]))


def _fails_cleanly(argv, capsys, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.new("RGB", (20, 10)).save(image)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    model, missing = str(tmp_path), str(tmp_path / "none.png")
    _fails_cleanly(["--model", model, "--image", missing, "--question", "q"], capsys, "does not exist")
    _fails_cleanly(["--model", model, "--image", str(broken), "--question", "q"], capsys, "unreadable image")
    _fails_cleanly(["--model", model, "--image", str(image), "--question", " "], capsys, "question is empty")
    _fails_cleanly(["--model", str(tmp_path / "nope"), "--image", str(image), "--question", "q"], capsys, "model")
    _fails_cleanly(["--model", model, "--image", str(image), "--question", "q", "nokey=1"], capsys, "bad override")
    # The default SAM2 preset wants a checkpoint: refused before any model is loaded.
    _fails_cleanly(["--model", model, "--image", str(image), "--question", "q"], capsys, "no SAM2 checkpoint")


def test_the_command_line_reports_a_model_that_never_answers_well_formed(tiny_qwen_path, tmp_path):
    """The real command (transformers on a CPU, ``backend=auto``): a random model's answers give no mask."""
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), np.uint8)).save(image)
    command = [sys.executable, "-m", "recipe.evaluate.infer", "--model", tiny_qwen_path, "--image", str(image)]
    command += ["--question", "the red square", "--sam-preset", "tiny_cpu", "generation.max_new_tokens=8"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("infer: no mask")
    assert "[step 0: grounding]" in done.stdout
    assert not (ROOT / "outputs" / "infer" / "photo").exists()
