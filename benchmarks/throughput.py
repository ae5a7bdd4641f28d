"""Training and evaluation throughput of the CIFAR-sized classifiers, and the wall time of one original + N oracles
(one after another, and stacked), on a generated data set of CIFAR-10's shape (no download).

    python benchmarks/throughput.py                                   # cnn_small, resnet18, airbench on this machine
    python benchmarks/throughput.py --models airbench --oracles 8 --images 2048 --device cuda --compile
    python benchmarks/throughput.py --markdown results/throughput_cpu.md   # also write the table

Everything goes through the harness's own pieces: the model from conf/model/<name>.yaml under data=cifar10, its
recipe's optimiser (SGD, batch `--batch`), the task's augmentation, `Task.fit` / `Task.fit_stacked` and
`predict_logits`. On CUDA the Runtime's defaults apply (bf16 autocast, channels_last); `--compile` wraps the
model in torch.compile for the throughput figures (the population figures use the harness's uncompiled loop).
Images/s counts training images (forward, backward, step) and evaluation images (forward under inference_mode).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from unlearn.config import build, compose_config
from unlearn.data.tensordata import TensorData
from unlearn.runtime import Runtime
from unlearn.tasks.classification import ClassificationTask
from unlearn.training import OptimConfig, stackable


def synchronise(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


def new_model(name: str, runtime: Runtime, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return runtime.place(build(compose_config("data=cifar10", f"model={name}").model))


def timed(fn, runtime: Runtime) -> float:
    synchronise(runtime)
    start = time.perf_counter()
    fn()
    synchronise(runtime)
    return time.perf_counter() - start


def measure(name: str, data: TensorData, task: ClassificationTask, recipe: OptimConfig, runtime: Runtime,
            oracles: int, compile_model: bool) -> dict[str, float | str]:
    model = new_model(name, runtime, 0)
    fitted = torch.compile(model) if compile_model else model
    one_epoch = OptimConfig(**{**vars(recipe), "epochs": 1})
    task.fit(fitted, data, one_epoch, runtime, torch.Generator().manual_seed(0))  # warm-up (and compilation)
    train_s = timed(lambda: task.fit(fitted, data, one_epoch, runtime, torch.Generator().manual_seed(1)), runtime)
    task.predict_logits(fitted, data, runtime)
    eval_s = timed(lambda: task.predict_logits(fitted, data, runtime), runtime)
    row: dict[str, float | str] = {"model": name, "train img/s": len(data) / train_s, "eval img/s": len(data) / eval_s}

    seeds = list(range(oracles + 1))
    row["1+N sequential s"] = timed(lambda: [task.fit(new_model(name, runtime, s), data, recipe, runtime,
                                                      torch.Generator().manual_seed(s)) for s in seeds], runtime)
    reason = stackable(model)
    row["1+N stacked s"] = float("nan") if reason else timed(
        lambda: task.fit_stacked([new_model(name, runtime, s) for s in seeds], data, recipe, runtime,
                                 [torch.Generator().manual_seed(s) for s in seeds]), runtime)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn_small", "resnet18", "airbench"])
    parser.add_argument("--images", type=int, default=512, help="generated training images (CIFAR-10: 50,000)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each model of the 1+N population")
    parser.add_argument("--oracles", type=int, default=4, help="N")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model for the throughput figures")
    parser.add_argument("--markdown", help="also write the table (with the command and device) to this file")
    args = parser.parse_args()
    runtime = Runtime.from_config(args.device, "auto", "auto", args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 32, 32, generator=generator)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    data = TensorData(x=x, y=torch.randint(0, 10, (args.images,), generator=generator)).to(runtime.device)
    task = ClassificationTask(num_classes=10, crop_padding=4, flip=True)
    recipe = OptimConfig(epochs=args.epochs, lr=0.05, batch_size=args.batch, momentum=0.9, weight_decay=5e-4)
    rows = []
    for name in args.models:
        rows.append(measure(name, data, task, recipe, runtime, args.oracles, args.compile))
        print(rows[-1], flush=True)

    device = torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    header = ["model", "train img/s", "eval img/s", "1+N sequential s", "1+N stacked s"]
    lines = [f"device: {device}; precision {runtime.precision}; channels_last {runtime.channels_last}; "
             f"compile {args.compile}; torch {torch.__version__}",
             f"{args.images} generated 3x32x32 images, batch {args.batch}; population: 1 original + {args.oracles} "
             f"oracles x {args.epochs} epoch(s)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[h]:.1f}" if isinstance(row[h], float) else str(row[h]) for h in header)
                     + " |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.markdown:
        command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
        with open(args.markdown, "w") as f:
            f.write(f"# Throughput of the CIFAR-sized classifiers\n\nProduced by:\n\n    {command}\n\n{table}\n")


if __name__ == "__main__":
    main()
