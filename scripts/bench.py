"""Benchmark ganlab's training step against minimal reference loops written the way the classic recipes write them.

    python scripts/bench.py --data-root ../shared/data                 # every case, CPU or GPU (device=auto)
    python scripts/bench.py --data-root ../shared/data --cases lsgan --steps 300 --rounds 5
    python scripts/bench.py --cases variants --base dcgan_mnist dataset.image_size=32 \
        --variant augment=none --variant augment=diffaugment --variant penalty=r1   # options against each other

For each case, ganlab's real step (`ganlab.step.train_step` on the preset's config, fast data path) and the
reference loop (`scripts/reference_loops.py`) run alternately in the same process, `--rounds` times each, after a
warm-up, so machine noise hits both alike. It prints steps/s, images/s, achieved GFLOP/s and its share of a matmul
peak measured here in the same run, peak memory, and the ratio ganlab / reference of the median steps/s.

FLOPs are counted as 2 x MACs of the forward passes (torch's FlopCounterMode on one image), with backward counted
as 2 x forward. One generator iteration is d_steps x (G + 3 x 2D) + 3D + 2G forward-equivalents per image: each
D step runs G, then D forward and backward on real and fake; the G step runs D forward and backward through to
the input, then G backward. The same count is used for ganlab and the reference: it is the recipe's math.

The `variants` case times ganlab's step on the `--base` preset (and overrides) under each `--variant`'s extra
overrides, alternately in the same way, with each variant's steps/s as a ratio to the first one's.

The `scoring` case times what an evaluation spends per image: the MNIST net's embedding (`eval.features=net`)
against torch-fidelity's InceptionV3 (`eval.features=inception`), on the same MNIST test images, alternately, with
each one's images/s as a ratio to Inception's. It loads `--inception-weights`, or writes seeded random ones (the
speed does not depend on the values).
"""

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_loops  # noqa: E402

import ganlab.train  # noqa: E402,F401  (registers the config schema)
from ganlab.config import build, resolve_image_size, validate  # noqa: E402
from ganlab.data import make_batches  # noqa: E402
from ganlab.device import resolve_device, seed_everything  # noqa: E402
from ganlab.step import build_gan, train_step  # noqa: E402

CASES = {
    # name: (ganlab preset, reference loop class)
    "lsgan": ("lsgan_mlp_mnist", reference_loops.LSGANReference),
    "fgan": ("fgan_mlp_mnist", reference_loops.FGANReference),
    "dcgan": ("dcgan_mnist", reference_loops.DCGANReference),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """The best fp32 GFLOP/s of an n x n matmul on this device: the ceiling the GAN step is compared with."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(3):
        a @ b
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def forward_flops(module: torch.nn.Module, example: torch.Tensor, labels: torch.Tensor | None) -> float:
    """FLOPs (2 x MACs) of one forward pass on `example` and its `labels` (None for an unconditional model)."""
    counter = FlopCounterMode(display=False)
    was_training = module.training
    module.eval()
    with counter, torch.no_grad():
        module(example, labels)
    module.train(was_training)
    return float(counter.get_total_flops())


def gan_step_flops(
    generator, discriminator, z: torch.Tensor, y: torch.Tensor | None, batch_size: int, d_steps: int
) -> float:
    """FLOPs of one generator iteration of the recipe (see the module docstring); y: the labels of z, or None."""
    y = y[:1] if y is not None else None
    g = forward_flops(generator, z[:1], y)
    with torch.no_grad():
        image = generator.eval()(z[:1], y)
    generator.train()
    d = forward_flops(discriminator, image, y)
    return batch_size * (d_steps * (g + 6 * d) + 3 * d + 2 * g)


def compose_preset(preset: str, root: str, device: str, overrides: list[str] = ()) -> object:
    """The preset's config as `ganlab-train` resolves it: validated, and a null `dataset.image_size` filled in."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        base = [f"experiment={preset}", f"dataset.root={root}", f"device={device}"]
        cfg = compose("config", overrides=base + list(overrides))
    validate(cfg)
    resolve_image_size(cfg)
    return cfg


def measure(step, steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of `step`, synchronised at the ends only."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - start


def alternate(contenders: dict, steps: int, args, device: torch.device) -> dict[str, float]:
    """Calls per second of each contender (the median of `args.rounds`), warmed up, then timed in turn each round."""
    seconds: dict[str, list[float]] = {key: [] for key in contenders}
    for step in contenders.values():
        measure(step, args.warmup, device)
    for _ in range(args.rounds):
        for key, step in contenders.items():
            seconds[key].append(measure(step, steps, device))
    return {key: steps / statistics.median(times) for key, times in seconds.items()}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_case(name: str, args, device: torch.device, peak: float) -> list[dict]:
    preset, reference_class = CASES[name]
    cfg = compose_preset(preset, args.data_root, args.device)
    seed_everything(cfg.seed)
    source = build(cfg.dataset, "dataset")
    gan = build_gan(cfg, device, source.num_classes, source=source)
    batches = make_batches(source, device, gan.model.output_range, cfg.train.batch_size, cfg.seed)
    batch, d_steps = cfg.train.batch_size, cfg.train.d_steps

    steps = args.conv_steps if gan.model.channels_last else args.steps

    def ganlab_step():
        train_step(gan, batches, batch, d_steps)

    if reference_class is reference_loops.DCGANReference:
        reference = reference_class(str(Path(args.data_root).absolute()), device, batch)
    else:
        images = batches.images.cpu().numpy() if hasattr(batches, "images") else None
        reference = reference_class(images)
    z, y = gan.model.sample_latent(2, device)
    flops = gan_step_flops(gan.model.generator, gan.model.discriminator, z, y, batch, d_steps)

    contenders = {"ganlab": ganlab_step, "reference": reference.step}
    seconds: dict[str, list[float]] = {key: [] for key in contenders}
    memory: dict[str, float] = {}
    for step in contenders.values():  # warm-up: workers start, kernels are chosen, caches fill
        measure(step, args.warmup, device)
    for _ in range(args.rounds):
        for key, step in contenders.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds[key].append(measure(step, steps, device))
            memory[key] = peak_memory_mb(device)
    rows = []
    for key in contenders:
        steps_per_second = steps / statistics.median(seconds[key])
        rows.append(
            {
                "case": f"{name} ({preset}, batch {batch}, d_steps {d_steps})",
                "loop": key,
                "steps/s": steps_per_second,
                "images/s": steps_per_second * batch * d_steps,
                "GFLOP/s": steps_per_second * flops / 1e9,
                "of peak": steps_per_second * flops / 1e9 / peak,
                "peak MB": memory[key],
            }
        )
    rows[0]["ratio"] = rows[0]["steps/s"] / rows[1]["steps/s"]
    return rows


def ganlab_step_of(cfg, device: torch.device):
    """ganlab's training step on `cfg`, built as training builds it, as a function of no arguments."""
    seed_everything(cfg.seed)
    source = build(cfg.dataset, "dataset")
    gan = build_gan(cfg, device, source.num_classes, source=source)
    batches = make_batches(source, device, gan.model.output_range, cfg.train.batch_size, cfg.seed)
    return lambda: train_step(gan, batches, cfg.train.batch_size, cfg.train.d_steps)


def bench_variants(args, device: torch.device) -> list[dict]:
    """ganlab's step on the base config under each variant's overrides, timed alternately; ratios to the first."""
    preset, *base = args.base
    steps = {}
    for variant in args.variant:
        cfg = compose_preset(preset, args.data_root, args.device, base + variant.split())
        steps[variant] = ganlab_step_of(cfg, device)
    rates = alternate(steps, args.conv_steps, args, device)
    first = rates[args.variant[0]]
    case = " ".join(args.base)
    return [{"case": case, "loop": variant, "steps/s": rate, "ratio": rate / first} for variant, rate in rates.items()]


def bench_data(args, device: torch.device) -> list[dict]:
    """Batch supply alone: ganlab's in-memory draw against the tutorial's DataLoader, 64x64 MNIST, batch 64."""
    cfg = compose_preset("dcgan_mnist", args.data_root, args.device)
    batches = make_batches(build(cfg.dataset, "dataset"), device, (-1.0, 1.0), 64)
    loader = reference_loops.tutorial_loader(str(Path(args.data_root).absolute()), 64)
    iterator = iter(loader)

    def reference_next():
        nonlocal iterator
        try:
            images, _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            images, _ = next(iterator)
        images.to(device)

    contenders = {"ganlab": lambda: batches.next(64), "reference": reference_next}
    rows = []
    for key, per_second in alternate(contenders, args.data_batches, args, device).items():
        rows.append({"case": "batch supply (64x64 MNIST, batch 64)", "loop": key, "images/s": per_second * 64})
    rows[0]["ratio"] = rows[0]["images/s"] / rows[1]["images/s"]
    return rows


def bench_scoring(args, device: torch.device) -> list[dict]:
    """Images per second of the two feature extractors on the same 28 px MNIST test images, and their ratio."""
    from ganlab.features import load_feature_net, prepare_images
    from ganlab.inception import Inception, write_random_weights

    source = build(compose_preset("dcgan_mnist", args.data_root, args.device, ["dataset.image_size=28"]).dataset,
                   "dataset")  # fmt: skip
    images = source.split("test").decode_uint8()[: args.scoring_images].to(device)
    net = load_feature_net("mnist").to(device)
    with tempfile.TemporaryDirectory() as folder:
        weights = args.inception_weights or Path(folder) / "random.pth"
        if args.inception_weights is None:
            write_random_weights(weights)
        inception = Inception.load(str(weights), device)

    def embed() -> None:
        with torch.no_grad():
            for batch in images.split(500):  # SampleQuality's batch
                net.features(prepare_images(batch, net.input_shape))

    contenders = {"net (mnist)": embed, "inception": lambda: inception.features(images)}
    rates = alternate(contenders, 1, args, device)
    case = f"scoring {len(images)} MNIST images"
    rows = [{"case": case, "loop": name, "images/s": rate * len(images)} for name, rate in rates.items()]
    for row in rows:
        row["ratio"] = row["images/s"] / rows[-1]["images/s"]  # how many times Inception's speed
    return rows


def mlp_run_peak_rss_mb(args) -> float:
    """Peak RSS of a real `ganlab-train` MNIST MLP run, in a child process (in the repository, with its run folder
    removed afterwards)."""
    root = Path(args.data_root).absolute()  # the child runs in the repository, not in this folder
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable, "-m", "ganlab.train", "experiment=lsgan_mlp_mnist", f"dataset.root={root}",
            "train.steps=300", "log.progress=false", f"device={args.device}", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def print_table(rows: list[dict], columns: list[str]) -> None:
    print("| " + " | ".join(columns) + " |")
    print("| " + " | ".join("---" for _ in columns) + " |")
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if column == "of peak" and value != "":
                value = f"{value:.0%}"
            elif column == "ratio" and value != "":
                value = f"{value:.2f}x"
            elif isinstance(value, float):
                value = f"{value:,.1f}"
            cells.append(str(value))
        print("| " + " | ".join(cells) + " |")


def read_table(text: str) -> list[dict[str, str]]:
    """The rows of every markdown table in `text` (as `print_table` writes them), as {column: cell}."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("- "):
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def number(cell: str) -> float:
    """The first number of a table cell such as `1,234.5`, `1.30x`, `40 (1.00x)` or `73%` (as 0.73)."""
    value = float(re.match(r"-?[\d,.]+", cell).group().replace(",", ""))
    return value / 100 if cell.endswith("%") else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data", help="folder holding MNIST/raw/")
    parser.add_argument("--device", default="auto", help="ganlab device option: auto, cpu or cuda")
    parser.add_argument("--cases", default="lsgan,fgan,dcgan,data,rss", help="comma-separated subset to run")
    parser.add_argument("--steps", type=int, default=200, help="generator iterations per timed round (MLP cases)")
    parser.add_argument("--conv-steps", type=int, default=10, help="generator iterations per timed round (DCGAN)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first, per contender")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per contender")
    parser.add_argument("--data-batches", type=int, default=200, help="batches per round of the data-supply case")
    parser.add_argument("--base", nargs="+", default=["dcgan_mnist"], help="variants: a preset, then overrides")
    parser.add_argument("--variant", action="append", default=[], help="variants: overrides (repeat the option)")
    parser.add_argument("--scoring-images", type=int, default=256, help="scoring: images per timed round")
    parser.add_argument("--inception-weights", help="scoring: torch-fidelity's weights file; default: random ones")
    args = parser.parse_args()
    cases = args.cases.split(",")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        device = resolve_device(compose("config", overrides=[f"device={args.device}"]).device)
    # first, while this process has no other child: RUSAGE_CHILDREN keeps the largest child's peak, and the DataLoader
    # workers that the dcgan and data cases fork count this process's memory as their own
    rss = mlp_run_peak_rss_mb(args) if "rss" in cases else None
    peak = matmul_peak_gflops(device)
    print(f"device: {device} ({torch.get_num_threads()} torch threads), torch {torch.__version__}")
    print(f"matmul peak (fp32 2048x2048): {peak:,.1f} GFLOP/s\n")
    rows = []
    for name in [c for c in cases if c in CASES]:
        rows += bench_case(name, args, device, peak)
    if rows:
        print_table(rows, ["case", "loop", "steps/s", "images/s", "GFLOP/s", "of peak", "peak MB", "ratio"])
    if "variants" in cases and args.variant:
        print()
        print_table(bench_variants(args, device), ["case", "loop", "steps/s", "ratio"])
    if "data" in cases:
        print()
        print_table(bench_data(args, device), ["case", "loop", "images/s", "ratio"])
    if "scoring" in cases:
        print()
        print_table(bench_scoring(args, device), ["case", "loop", "images/s", "ratio"])
    if rss is not None:
        print(f"\npeak RSS of an MNIST MLP run (ganlab-train experiment=lsgan_mlp_mnist): {rss:,.0f} MB")


if __name__ == "__main__":
    main()
