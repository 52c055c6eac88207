"""Measure the metric's floor per evaluation protocol (docs/method.md section 8's protocol table).

    python analysis/measure_floors.py [--fashion-vq data/tokenizers/fashion_mnist_vq7/vqvae.pt] [--out floors.json]

For each data set: real images of the split that is not the reference (train), class-balanced like the
evaluation's samples, scored against the reference split (val) at several sample counts, with the FD's
bootstrap interval; and the tokenizer's floor (the same images after an encode / decode round trip).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sar_lightning.data.datasets import dataset_info, load_images
from sar_lightning.data.tokenizers import PixelQuantizer, load_vqvae
from sar_lightning.evaluation.features import get_classifier_extractor
from sar_lightning.evaluation.floors import real_floor, tokenizer_floor
from sar_lightning.evaluation.metrics import reference_features


def measure(name: str, tokenizer, counts: list[int]) -> list[dict]:
    extractor = get_classifier_extractor(name, seed=0)
    pool, reference = load_images(name, "train"), load_images(name, "val")
    ref = reference_features(extractor, reference[0])
    classes = len(dataset_info(name)["class_names"])
    rows = []
    for n in counts:
        rows.append({"data": name, "reference": f"val ({len(ref)})", "floor": "real"}
                    | real_floor(extractor, pool, ref, n, classes))
        rows.append({"data": name, "reference": f"val ({len(ref)})", "floor": "tokenizer"}
                    | tokenizer_floor(extractor, tokenizer, pool, ref, n, classes))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fashion-vq", default="data/tokenizers/fashion_mnist_vq7/vqvae.pt")
    p.add_argument("--out", default=None, help="write the rows as JSON here too")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = measure("digits", PixelQuantizer(17), [250, 500, 1000, 1390])
    if Path(args.fashion_vq).exists():
        rows += measure("fashion_mnist", load_vqvae(args.fashion_vq).eval(), [1000, 2000])
    print("| data | reference | floor | samples | FD | 95% interval | bootstrap SD |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['reference']} | {r['floor']} | {r['num_samples']} | {r['fd']:.2f} | "
              f"[{r['fd_lo']:.2f}, {r['fd_hi']:.2f}] | {r['fd_std']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
