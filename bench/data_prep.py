"""Data-preparation throughput on the synthetic refer dataset: samples/s with 1 and 2 worker processes."""

import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from data_prep import __main__ as cli
from data_prep.synthetic import write_refer_dataset


def main(argv: list[str] | None = None, images: int = 48) -> None:
    with tempfile.TemporaryDirectory() as directory:
        refer = write_refer_dataset(Path(directory), "refcocog", num_images=images, objects_per_image=3)
        rates = {}
        for workers in (1, 2):
            out = Path(directory) / f"train_{workers}.parquet"
            args = [
                "refer",
                "--dataset",
                "refcocog",
                "--split",
                "train",
                "--workers",
                str(workers),
                "--shard-size",
                "16",
            ]
            args += ["--refer-root", str(refer.refer_root), "--image-root", str(refer.image_root), "--out", str(out)]
            started = time.perf_counter()
            cli.main(args)
            rates[workers] = pq.read_metadata(out).num_rows / (time.perf_counter() - started)
        print(
            f"data_prep refer: {rates[1]:.1f} samples/s with 1 worker, {rates[2]:.1f} with 2 "
            f"({rates[2] / rates[1]:.2f}x)"
        )


if __name__ == "__main__":
    main()
