"""How far labels can take the deployed model under Gaussian noise: adapt() with 5,000 labeled noisy
training images (far more than any capture), scored on the 10,000 noisy test images.

    .venv/bin/python bench/drift/noise_ceiling.py --firmware FWDIR --run RUN [--steps 300 1500]

Prints the static accuracy and the tuned one per step count; the deployed masks and formats are kept,
as the controller keeps them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mcuprune.controller.adapt import adapt
from mcuprune.controller.scenarios import SCENARIOS
from mcuprune.model.interpreter import run_s8
from mcuprune.target.compile import load_firmware_dir
from mcuprune.train.datasets import load_dataset, to_int8

LABELED = 5000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[300, 1500])
    args = ap.parse_args()
    fw = load_firmware_dir(Path(args.firmware))
    ds = load_dataset("fashion-mnist")
    noise = SCENARIOS["gaussian_noise"]
    x_train, y_train = noise.transform(ds.x_train[:LABELED], seed=3), ds.y_train[:LABELED]
    x_test = noise.transform(ds.x_test, seed=4)

    def accuracy(model) -> float:
        pred = [run_s8(model, to_int8(x_test[s : s + 512])).argmax(axis=1) for s in range(0, len(x_test), 512)]
        return float(np.mean(np.concatenate(pred) == ds.y_test))

    print(f"static {100 * accuracy(fw.model):.2f} %")
    for steps in args.steps:
        result = adapt(Path(args.run), fw.model, fw.formats, x_train, labels=y_train,
                       steps=("input", "tune", "calibrate"), train_images=ds.x_train, train_labels=ds.y_train,
                       tune_steps=steps)
        print(f"{LABELED} labeled noisy images, {steps} steps: {100 * accuracy(result.model):.2f} %")


if __name__ == "__main__":
    main()
