"""Runs every benchmark: ``python -m bench [name ...]``."""

import argparse

from bench import data_prep, edge_iou, reward

BENCHMARKS = {"edge_iou": edge_iou.main, "data_prep": data_prep.main, "reward": reward.main}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run, from {sorted(BENCHMARKS)} (default: all)")
    names = parser.parse_args().names
    unknown = sorted(set(names) - BENCHMARKS.keys())
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {sorted(BENCHMARKS)}")
    for name in names or BENCHMARKS:
        BENCHMARKS[name]([])


if __name__ == "__main__":
    main()
