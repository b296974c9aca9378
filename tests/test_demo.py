"""The demo page (``recipe.evaluate.demo``) driven in a real browser (chromium through playwright).

References: :meth:`Inferencer.segment` run directly on the same image, question and script (its final mask and
steps), ``mask_iou`` of its masks with the row's ground truth decoded by pycocotools, the scripted number of turns,
and the URLs the browser requested (the page must never leave 127.0.0.1).
"""

import asyncio
import io
import json
import shutil
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from recipe.evaluate.demo import build_demo, launch, main
from recipe.evaluate.infer import Inferencer, infer_config
from reward_server.masks import mask_iou

from support.scripted_answers import coco_decode, scripts

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL = "http://127.0.0.1"
WAIT_MS = 60_000


class EpisodePolicy:
    """Answers turn n of each episode with ``script[n]`` (the last entry from then on), so one server takes many
    requests; a refinement turn first waits for ``hold`` to be set, so a test can look at the page in between.
    With ``error`` set, raises it instead, as a crashing model would."""

    seconds = 0.0

    def __init__(self, script):
        self.script, self.turn, self.hold, self.error = script, 0, threading.Event(), None
        self.hold.set()

    async def generate(self, batch):
        if self.error is not None:
            raise self.error
        (messages,) = batch
        refining = "green segmentation mask" in messages[0]["content"][1]["text"]
        self.turn = self.turn + 1 if refining else 0
        if refining:
            # Off the event loop: the SAM2 engine shares it.
            await asyncio.to_thread(self.hold.wait, WAIT_MS / 1000)
        return [self.script[min(self.turn, len(self.script) - 1)]]


@dataclass
class Served:
    mode: str
    url: str
    inferencer: Inferencer
    policy: EpisodePolicy
    out_root: Path
    analytics: bool


@dataclass
class Browsing:
    page: object
    requests: list[str] = field(default_factory=list)

    def offsite(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(LOCAL)]


@pytest.fixture(scope="module")
def row(eval_sets):
    """The first RefCOCOg test row, as data_prep stored it."""
    return pq.read_table(eval_sets / "refcocog_test.parquet").to_pylist()[0]


@pytest.fixture(scope="module")
def files(row, tmp_path_factory):
    """The row's image, its ground truth as a 0/255 PNG, one of the wrong size, and a file that is no image."""
    root = tmp_path_factory.mktemp("demo_inputs")
    (root / "photo.jpg").write_bytes(row["orig_image"])
    truth = coco_decode(row["reward_model"]["ground_truth"]["orig_mask"])
    Image.fromarray(truth.astype(np.uint8) * 255).save(root / "truth.png")
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(root / "small.png")
    (root / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("needs chromium: apt install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module", params=["samr1", "veteran"])
def served(request, row, tmp_path_factory):
    """One server per mode, with the tiny random SAM2 and the mode's script."""
    policy = EpisodePolicy(scripts(row)[request.param])
    inferencer = Inferencer(infer_config(request.param, None, ["reward_server=tiny_cpu"]), policy=policy)
    out_root = tmp_path_factory.mktemp(f"demo_{request.param}")
    demo = build_demo(inferencer, out_root)
    url = launch(demo, out_root, "127.0.0.1", _free_port())
    yield Served(request.param, url, inferencer, policy, out_root, demo.analytics_enabled)
    demo.close()


@pytest.fixture
def browsing(browser, served):
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    browsing = Browsing(page)
    page.on("request", lambda request: browsing.requests.append(request.url))
    page.goto(served.url)
    page.locator("#submit").wait_for()
    yield browsing
    page.close()


def _upload(page, target: str, path: Path) -> None:
    page.locator(f"#{target} input[type=file]").set_input_files(str(path))
    page.locator(f"#{target} img").wait_for()  # the preview: the upload has reached the server


def _submit(page, question: str) -> None:
    page.locator("#question textarea").fill(question)
    page.locator("#submit").click()


def _finished(page) -> None:
    page.locator('#downloads a[download="mask.png"]').wait_for()


def _steps(page) -> list[str]:
    """The gallery's captions and the log's step headings, which must agree."""
    captions = page.locator("#steps .thumbnail-item img").evaluate_all("images => images.map(i => i.alt)")
    headings = page.locator("#log h3").all_inner_texts()
    assert len(captions) == len(headings)
    return headings


def _reference(served: Served, row):
    """``Inferencer.segment`` on the row, off this thread: playwright's sync API keeps an event loop running here."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(served.inferencer.segment, row["orig_image"], row["extra_info"]["question"]).result()


def _status(page, text: str) -> str:
    status = page.locator("#status")
    status.filter(has_text=text).wait_for()
    return status.inner_text()


@pytest.mark.slow
def test_each_step_appears_as_it_comes_and_the_download_is_the_inferencers_mask(served, browsing, files, row):
    page, question = browsing.page, row["extra_info"]["question"]
    script = scripts(row)[served.mode]
    _upload(page, "image", files / "photo.jpg")
    served.policy.hold.clear()
    try:
        _submit(page, question)
        page.locator("#steps .thumbnail-item img").first.wait_for()
        shown_early = _steps(page)  # veteran: the refinement turn is held until the page shows the grounding step
    finally:
        served.policy.hold.set()
    _finished(page)
    assert shown_early == ["Step 0: grounding"]

    expected = _reference(served, row)
    kinds = ["grounding"] + ["refinement"] * (len(script) - 1)
    assert len(expected.steps) == len(script) == {"samr1": 1, "veteran": 3}[served.mode]
    assert _steps(page) == [f"Step {index}: {kind}" for index, kind in enumerate(kinds)]
    sections = page.locator("#log").inner_text().split("Step ")[1:]
    assert len(sections) == len(script)
    if served.mode == "veteran":
        assert "Stop: the model accepts the mask" in sections[-1]
    for section, step in zip(sections, expected.steps, strict=True):
        if step.mask is not None:
            assert f"Mask: {int(step.mask.sum())} pixels, SAM2 score {step.score:.3f}" in section
    assert f"Done ({expected.termination})" in _status(page, "Done")

    downloaded = page.request.get(page.locator('#downloads a[download="mask.png"]').get_attribute("href"))
    mask = np.array(Image.open(io.BytesIO(downloaded.body()))) > 0
    assert expected.mask.any() and not expected.mask.all(), "the check needs a mask that is neither empty nor full"
    assert np.array_equal(mask, expected.mask)
    rle = json.loads(page.request.get(page.locator('#downloads a[download="mask.json"]').get_attribute("href")).text())
    assert np.array_equal(coco_decode(rle), expected.mask)
    assert browsing.offsite() == [] and not served.analytics


@pytest.mark.slow
def test_an_uploaded_ground_truth_gives_each_steps_iou(served, browsing, files, row):
    page, question = browsing.page, row["extra_info"]["question"]
    _upload(page, "image", files / "photo.jpg")
    _upload(page, "truth", files / "truth.png")
    _submit(page, question)
    _finished(page)

    truth = coco_decode(row["reward_model"]["ground_truth"]["orig_mask"])
    expected = _reference(served, row)
    sections = page.locator("#log").inner_text().split("Step ")[1:]
    assert len(sections) == len(expected.steps)
    for section, step in zip(sections, expected.steps, strict=True):
        if step.mask is not None:
            assert f"IoU with the ground truth {100 * mask_iou(step.mask, truth):.1f}%" in section
        else:
            assert "IoU" not in section
    assert f"IoU with the ground truth {100 * mask_iou(expected.mask, truth):.1f}%" in _status(page, "Done")
    assert browsing.offsite() == []


@pytest.mark.slow
def test_bad_inputs_get_a_message_and_the_page_keeps_working(served, browsing, files, row):
    page, question = browsing.page, row["extra_info"]["question"]
    _submit(page, question)
    assert "upload an image first" in _status(page, "Error")

    _upload(page, "image", files / "broken.png")
    _submit(page, question)
    assert "unreadable image" in _status(page, "unreadable")

    page.locator("#image button[aria-label='Remove Image']").click()
    _upload(page, "image", files / "photo.jpg")
    _submit(page, "   ")
    assert "the question is empty" in _status(page, "question")

    _upload(page, "truth", files / "small.png")
    _submit(page, question)
    height, width = np.array(Image.open(files / "photo.jpg")).shape[:2]
    assert f"the ground-truth mask is 9x7 pixels but the image is {width}x{height}" in _status(page, "9x7")
    page.locator("#truth button[aria-label='Remove Image']").click()

    script = served.policy.script
    served.policy.script = ['<think>no idea</think><answer>{"bbox_2d": [5, 5]}</answer>']
    try:
        _submit(page, question)
        assert "bbox_2d: expected 4 numbers" in _status(page, "no mask (invalid_")
    finally:
        served.policy.script = script
    assert _steps(page) == ["Step 0: grounding"] and page.locator("#downloads a").count() == 0

    served.policy.error = RuntimeError("CUDA out of memory")
    try:
        _submit(page, question)
        assert "segmenting failed: CUDA out of memory" in _status(page, "segmenting failed")
    finally:
        served.policy.error = None

    _submit(page, question)
    _finished(page)
    assert len(_steps(page)) == len(script)
    assert browsing.offsite() == []


def test_a_missing_model_or_sam2_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    for argv, expected in [(["--model", "/nonexistent"], "does not exist"), (["--model", str(tmp_path)], "SAM2")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err


def test_segment_reports_the_result_so_far_after_each_turn(row):
    policy = EpisodePolicy(scripts(row)["veteran"])
    inferencer = Inferencer(infer_config("veteran", None, ["reward_server=tiny_cpu"]), policy=policy)
    snapshots = []
    with ThreadPoolExecutor(max_workers=1) as pool:  # off this thread: the browser tests' event loop may run here
        result = pool.submit(inferencer.segment, row["orig_image"], "object 000", snapshots.append).result()
    assert [len(snapshot.steps) for snapshot in snapshots] == [1, 2, 3]
    assert [snapshot.termination for snapshot in snapshots] == [None, None, "stop"] == [None, None, result.termination]
    for snapshot in snapshots:
        for shown, final in zip(snapshot.steps, result.steps, strict=False):
            assert shown.prompt == final.prompt and np.array_equal(shown.mask, final.mask)
    assert np.array_equal(snapshots[-1].mask, result.mask) and result.mask is not None
