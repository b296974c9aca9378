"""Shared pytest fixtures: tiny random models built at test time, nothing downloaded.

pytest's default (prepend) import mode puts this directory on ``sys.path`` when it loads this file, before any
test module, so the test modules import the shared doubles as ``support.<module>``.
"""

import os
from pathlib import Path

import pytest

# Ray and vLLM bind loopback only in tests; set before any test imports them.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--learning", action="store_true", help="run the learning checks (make test-learn)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_learning = pytest.mark.skip(reason="a learning check: make test-learn (pytest --learning) runs it")
    skip_gpu = None if _has_cuda() else pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "learning" in item.keywords and not config.getoption("--learning"):
            item.add_marker(skip_learning)
        if "gpu" in item.keywords and skip_gpu is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_qwen_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a tiny random Qwen2.5-VL saved with `save_pretrained` (real Qwen2.5 vocabulary)."""
    from recipe.tiny_vlm import build_tiny_qwen2_5_vl

    return str(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl")))


@pytest.fixture(scope="session")
def tiny_qwen3_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a tiny random Qwen3-VL saved with `save_pretrained` (real Qwen3 vocabulary, 0-1000 coordinates)."""
    from recipe.tiny_vlm import build_tiny_qwen3_vl

    return str(build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl")))


@pytest.fixture(scope="session")
def tiny_sam2():
    """A tiny random SAM2 (``sam2.1_hiera_t``, no checkpoint) on CPU."""
    import torch

    from reward_server.sam2_build import build_sam2_model

    torch.manual_seed(0)
    return build_sam2_model("sam2.1_hiera_t", ckpt_path=None, device="cpu")


@pytest.fixture(scope="session")
def eval_sets(tmp_path_factory: pytest.TempPathFactory):
    """Synthetic RefCOCOg test and ReasonSeg val (with ignore pixels) converted by data_prep into evaluation rows.

    Questions are rewritten to unique ``object NNN`` strings, so scripted policies can tell samples apart.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.schema import ROW
    from data_prep.smoke import build_eval_sets

    eval_dir = build_eval_sets(tmp_path_factory.mktemp("eval_sets"))
    number = 0
    for path in sorted(eval_dir.glob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            row["extra_info"]["question"] = f"object {number:03d}"
            number += 1
        pq.write_table(pa.Table.from_pylist(rows, schema=ROW), path)
    return eval_dir


@pytest.fixture(scope="session")
def samr1_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic SAM-R1 training parquet of 4 rows (RefCOCOg format, converted by data_prep)."""
    from data_prep.synthetic import synthetic_refer_parquet

    root = tmp_path_factory.mktemp("samr1_parquet")
    return synthetic_refer_parquet(root, root / "samr1.parquet", "samr1", num_images=12, limit=4, seed=0)
