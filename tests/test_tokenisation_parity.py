"""Training and evaluation tokenise a row identically (issue 12, point 11).

The reference is training: verl's ``RLHFDataset`` built with the recipe's composed data config, then the row's own
agent loop (``single_turn_agent`` for SAM-R1; ``veteran_grounding`` and the first turn of ``veteran_workflow`` for
SAM-Veteran) with the tokenizer and processor verl's agent-loop worker gets from ``HFModelConfig``. The loops run
for real against a scripted server, which records the prompt ids and images verl's rollout would be sent; the pixel
values and image grid of the actor's forward pass come from verl's own ``AgentLoopWorker._compute_multi_modal_inputs``.

The evaluator reads the same parquet row as an ``EvalSample``, builds the episode of its mode, and drives it with its
own ``run_episodes`` through the transformers policy of ``build_policy``; only ``model.generate`` is replaced, by a
recorder of the tensors the policy feeds it.
"""

import asyncio
import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from recipe.evaluate.config import eval_config
from recipe.evaluate.modes import get_mode
from recipe.evaluate.policies import build_policy, vllm_prompts
from recipe.evaluate.samples import EvalSample, iter_samples
from recipe.task.episodes import run_episodes
from recipe.verl_runtime.compose import compose_recipe
from recipe.veteran import agent_loops, workflow_loop

from support.agent_loops import ScriptedServer, instantiate_agent_loop
from support.fake_sam import FakeSam

pytestmark = pytest.mark.slow

# An answer every mode rejects before SAM2: each episode and loop ends after its first turn.
NO_ANSWER = "no tags"


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, Path]:
    """Evaluation rows (test split, so they keep ``orig_image``) of both recipes, converted by data_prep's CLI, and
    the workflow rows data_prep derives from SAM-Veteran's grounding rows."""
    from data_prep import __main__ as data_prep_cli
    from data_prep.synthetic import write_refer_dataset
    from data_prep.veteran import build_workflow

    root = tmp_path_factory.mktemp("parity_rows")
    refer = write_refer_dataset(root / "downloads", "refcocog", num_images=6, seed=0)
    files = {}
    for recipe in ("samr1", "veteran"):
        files[recipe] = root / f"{recipe}.parquet"
        args = ["refer", "--dataset", "refcocog", "--split", "test", "--recipe", recipe, "--workers", "1"]
        args += ["--refer-root", str(refer.refer_root), "--image-root", str(refer.image_root)]
        assert data_prep_cli.main([*args, "--out", str(files[recipe])]) == 0
    files["workflow"] = root / "workflow.parquet"
    build_workflow(files["veteran"], files["workflow"])
    return files


def recipe_config(recipe: str, model: str, *overrides: str):
    # The length filter only drops rows, never changes a kept row's tokens; off, it spares a processor pass per row.
    return compose_recipe(
        recipe, [f"actor_rollout_ref.model.path={model}", "data.filter_overlong_prompts=false", *overrides]
    )


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def base_model(request, tiny_qwen_path, tiny_qwen3_path) -> str:
    """Each base model family's tiny model: Qwen2.5-VL's (the papers') and Qwen3-VL's (its template, 32-px images)."""
    return {"qwen2_5_vl": tiny_qwen_path, "qwen3_vl": tiny_qwen3_path}[request.param]


@pytest.fixture(scope="module")
def verl_model(base_model):
    """The tokenizer and processor verl's agent-loop worker uses (``HFModelConfig`` of the recipe's model section)."""
    from verl.utils.config import omega_conf_to_dataclass

    model = omega_conf_to_dataclass(recipe_config("samr1", base_model).actor_rollout_ref.model)
    assert model.hf_config.model_type in ("qwen2_5_vl", "qwen3_vl")
    assert Path(model.local_path) == Path(base_model)
    return model


def family_of(verl_model) -> tuple[str, int]:
    return verl_model.hf_config.model_type, verl_model.processor.image_processor.patch_size


def evaluation_config(model: str, mode: str, *overrides: str):
    """The evaluator's config of ``mode``, composed from ``conf/evaluate.yaml`` as ``make eval`` composes it."""
    base = [f"mode={mode}", f"model.path={model}", "model.backend=transformers", "reward_server=tiny_cpu"]
    return eval_config(compose_recipe("evaluate", [*base, *overrides]))


@pytest.fixture(scope="module")
def policy(base_model):
    """The evaluator's transformers policy as ``build_policy`` builds it (the mode only sets its repetition penalty,
    so one serves every mode)."""
    return Recorder.attach(build_policy(evaluation_config(base_model, "samr1"), get_mode("samr1")))


class Recorder:
    """Stands in for ``model.generate``: records the batch the policy built and answers nothing (so every episode
    ends at its first turn)."""

    def __init__(self):
        self.calls: list[dict[str, torch.Tensor]] = []

    @classmethod
    def attach(cls, policy):
        policy.recorder = cls()
        policy.model.generate = policy.recorder
        return policy

    def __call__(self, **inputs):
        self.calls.append({key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)})
        return inputs["input_ids"]


def training_turn(config, verl_model, path: Path, index: int, monkeypatch):
    """verl's first turn of row ``index``: the prompt ids and images sent to the rollout server, and the pixel values
    and image grid of the actor's forward pass."""
    from verl import DataProto
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.dataset.rl_dataset import collate_fn

    tokenizer, processor = verl_model.tokenizer, verl_model.processor
    row = create_rl_dataset([str(path)], config.data, tokenizer, processor, is_train=True)[index]
    # As the trainer batches it: the worker hands a loop one row of the batch's non-tensor fields.
    batch = DataProto.from_single_dict(collate_fn([row]))
    kwargs = {key: values[0] for key, values in batch.non_tensor_batch.items()}
    for module in (agent_loops, workflow_loop):
        monkeypatch.setattr(module, "get_sam_client", lambda _: FakeSam())
    server = ScriptedServer(tokenizer, NO_ANSWER)

    async def run():
        loop = instantiate_agent_loop(config, row["agent_name"], server, tokenizer, processor)
        return await loop.run({"temperature": 1.0}, **kwargs)

    output = asyncio.run(run())
    (call,) = server.calls
    assert call["prompt_ids"] == output.prompt_ids  # what the actor trains on is what the rollout was sent
    mm_kwargs = config.data.mm_processor_kwargs
    worker = SimpleNamespace(processor=processor, tokenizer=tokenizer, mm_processor_kwargs=mm_kwargs)
    worker._get_mm_processor_kwargs = functools.partial(AgentLoopWorker._get_mm_processor_kwargs, worker)
    input_ids = torch.tensor([output.prompt_ids + output.response_ids])
    vision = AgentLoopWorker._compute_multi_modal_inputs(worker, output, input_ids)
    return SimpleNamespace(row=row, ids=call["prompt_ids"], images=call["images"], vision=vision)


def evaluation_turns(policy, episodes) -> list[dict]:
    """The evaluator's first batch for ``episodes``: per episode its unpadded ids, pixel values, grid and messages."""
    messages = [episode.next_messages() for episode in episodes]
    before = len(policy.recorder.calls)
    asyncio.run(run_episodes(episodes, policy, FakeSam()))
    assert all(episode.done for episode in episodes)
    (call,) = policy.recorder.calls[before:]  # one batched turn
    grids = call["image_grid_thw"]
    pixels = torch.split(call["pixel_values"], grids.prod(dim=1).tolist())
    return [
        {"ids": ids[mask.bool()].tolist(), "pixels": pixel, "grid": grid, "messages": turn}
        for ids, mask, pixel, grid, turn in zip(
            call["input_ids"], call["attention_mask"], pixels, grids, messages, strict=True
        )
    ]


def samples(path: Path, count: int) -> list[EvalSample]:
    return list(iter_samples([path], limit=count))


IMAGE_GRIDS = {"qwen2_5_vl": ([1, 60, 60], 900), "qwen3_vl": ([1, 52, 52], 676)}
"""The 840x840 model image's patch grid and visual tokens (2x2 patches merged into one): Qwen2.5-VL's 14-pixel
patches keep it whole (docs/conventions.md); Qwen3-VL's 16-pixel ones see it resized to 832x832."""


def assert_same_turn(training, evaluation, tokenizer, family: str, patch_size: int):
    """Token ids, the image the model sees and its encoding are the same in training and evaluation."""
    if training.ids != evaluation["ids"]:
        first = next(
            (i for i, (a, b) in enumerate(zip(training.ids, evaluation["ids"], strict=False)) if a != b),
            min(len(training.ids), len(evaluation["ids"])),
        )
        window = slice(max(0, first - 5), first + 15)
        pytest.fail(
            f"prompt ids differ at token {first} (training {len(training.ids)} tokens, evaluation "
            f"{len(evaluation['ids'])}):\n  training:   {tokenizer.decode(training.ids[window])!r}\n"
            f"  evaluation: {tokenizer.decode(evaluation['ids'][window])!r}"
        )
    (image,) = training.images  # the image verl sends the rollout server
    (shown,) = [part["image"] for part in evaluation["messages"][0]["content"] if part["type"] == "image"]
    assert shown.size == (840, 840)
    grid, tokens = IMAGE_GRIDS[family]
    assert image.size == (grid[2] * patch_size, grid[1] * patch_size)
    assert torch.equal(training.vision["image_grid_thw"][0], evaluation["grid"])
    assert torch.equal(training.vision["pixel_values"], evaluation["pixels"])
    assert evaluation["grid"].tolist() == grid
    assert training.ids.count(tokenizer.convert_tokens_to_ids("<|image_pad|>")) == tokens


def assert_vllm_prompt_matches(processor, messages, training):
    """The evaluator's vLLM request (prompt text and images), processed by the checkpoint's processor as vLLM's
    Qwen2.5-VL input processing does, gives the training ids too."""
    (request,) = vllm_prompts(processor, [messages])
    encoded = processor(text=[request["prompt"]], images=request["multi_modal_data"]["image"], return_tensors="pt")
    assert encoded["input_ids"][0].tolist() == training.ids


def test_samr1_single_turn_rows_tokenise_as_in_training(rows, base_model, verl_model, policy, monkeypatch):
    config = recipe_config("samr1", base_model)
    training = [training_turn(config, verl_model, rows["samr1"], index, monkeypatch) for index in (0, 1)]
    assert all(turn.row["agent_name"] == "single_turn_agent" for turn in training)
    # Two questions of different lengths, so the evaluator's batch is left-padded.
    assert len(training[0].ids) != len(training[1].ids)
    cfg = evaluation_config(base_model, "samr1")
    batch = samples(rows["samr1"], 2)
    assert [sample.question for sample in batch] == [turn.row["extra_info"]["question"] for turn in training]
    evaluation = evaluation_turns(policy, [get_mode("samr1").build(sample, cfg) for sample in batch])
    for train_turn, eval_turn in zip(training, evaluation, strict=True):
        assert_same_turn(train_turn, eval_turn, verl_model.tokenizer, *family_of(verl_model))
    assert_vllm_prompt_matches(policy.processor, evaluation[0]["messages"], training[0])


@pytest.mark.parametrize(
    ("rows_key", "mode", "ablation"),
    [
        ("veteran", "veteran", None),
        ("workflow", "veteran", None),
        ("workflow", "baseline", None),
        ("veteran", "veteran", "no_cot"),
        ("workflow", "veteran", "no_cot"),
    ],
)
def test_veteran_first_turn_tokenises_as_in_training(
    rows, base_model, verl_model, policy, monkeypatch, rows_key, mode, ablation
):
    """SAM-Veteran's grounding task and the workflow loop's first turn equal the evaluator's grounding turn, with
    the reasoning prompt and with the "w/o CoT" ablation's answer-only prompt."""
    overrides = [f"+veteran_ablation={ablation}"] if ablation else []
    training = training_turn(
        recipe_config("veteran", base_model, *overrides), verl_model, rows[rows_key], 0, monkeypatch
    )
    expected_loop = {"veteran": "veteran_grounding", "workflow": "veteran_workflow"}[rows_key]
    assert training.row["agent_name"] == expected_loop
    cot = [] if ablation is None else ["veteran.grounding_cot=false", "veteran.mask_cot=false"]
    cfg = evaluation_config(base_model, mode, *cot)
    (sample,) = samples(rows[rows_key], 1)
    (evaluation,) = evaluation_turns(policy, [get_mode(mode).build(sample, cfg)])
    assert_same_turn(training, evaluation, verl_model.tokenizer, *family_of(verl_model))
    assert_vllm_prompt_matches(policy.processor, evaluation["messages"], training)
