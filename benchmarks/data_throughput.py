"""One training epoch of CIFAR-10 batches: in-memory device tensors vs the streaming DataLoader path.

Both paths use the same plan and augmentation (pad-4 crop + flip, batch 256); the in-memory path pays
for decoding once (`decode_s`, then `cached_load_s` on the next build), the stream path every epoch.
Prints one JSON object. Usage:
    PYTHONPATH=. .venv/bin/python benchmarks/data_throughput.py [--root DIR] [--max-train N]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from flexnas.data import Batches, DataConfig, build_data

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def time_epoch(batches: Batches, device: torch.device) -> tuple[int, float]:
    """(images, seconds) for one full epoch, synchronising so device work is counted."""
    start = time.perf_counter()
    images = 0
    for x, _ in batches.epoch(0):
        images += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="CIFAR-10 in the ImageFolder layout")
    parser.add_argument("--max-train", type=int, default=None, help="class-balanced train subset size")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 avoids oversubscription on a busy CPU)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    common = dict(name="imagefolder", root=args.root, batch_size=args.batch_size, train_portion=1.0,
                  augment=True, max_train=args.max_train, max_test=1000, workers=args.workers)

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        build_data(DataConfig(**common, stream=False), device, cache_dir=Path(cache))
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        memory = build_data(DataConfig(**common, stream=False), device, cache_dir=Path(cache))
        cached_load_s = time.perf_counter() - start
    n_mem, t_mem = time_epoch(memory.train, device)
    del memory

    stream = build_data(DataConfig(**common, stream=True), device)
    n_stream, t_stream = time_epoch(stream.train, device)

    result = {
        "in_memory_images_per_s": round(n_mem / t_mem, 1),
        "stream_images_per_s": round(n_stream / t_stream, 1),
        "ratio": round((n_mem / t_mem) / (n_stream / t_stream), 2),
        "decode_s": round(decode_s, 2),
        "cached_load_s": round(cached_load_s, 2),
        "train_images_per_epoch": n_mem,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
