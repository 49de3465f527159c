"""The training loop through its real code path: composed configs, real loaders, real event files read back."""

import io
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATASET_KINDS, TOY_KINDS, compose_config, dataset_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.swa_utils import AveragedModel

from ganlab import losses
from ganlab.checkpoint import CHECKPOINT, PREVIOUS
from ganlab.config import build
from ganlab.errors import CheckpointError, ConfigError, DataError
from ganlab.monitor import Progress
from ganlab.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
REGULARIZERS = sorted(p.stem for p in (CONF / "regularizer").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# Small enough for a CPU test, while every layer of every architecture still runs.
TINY = {
    "mlp": ["model.hidden=16"],
    "dcgan": ["model.g_width=4", "model.d_width=4", "model.z_dim=8"],  # the image size follows the model
    "resnet": ["model.g_width=4", "model.d_width=4", "model.z_dim=8"],
}
QUICK = [
    "train.steps=2",
    "train.batch_size=4",
    "log.every=1",
    "log.sample_every=1",
    "log.num_samples=4",
    "train.checkpoint_every=0",
    "log.progress=false",
    "eval.num_samples=16",
    "device=cpu",
    "device.threads=1",  # tiny tensors: one thread avoids OpenMP overhead
]


def run(tmp_path: Path, data_root: Path, overrides: list[str], kind: str = "mnist", name: str = "run") -> dict:
    cfg = compose_config(QUICK + dataset_overrides(kind, data_root) + overrides)
    return train(cfg, tmp_path / name)


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.parametrize("kind", DATASET_KINDS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_loss_and_dataset_trains(tmp_path, data_root, model, loss, kind):
    overrides = [f"model={model}", f"loss={loss}"] + TINY[model]
    if model != "mlp" and kind in TOY_KINDS:  # points are not images: a clear error, not a shape mismatch
        with pytest.raises(ConfigError, match="dataset.image_size"):
            run(tmp_path, data_root, overrides, kind)
        return
    summary = run(tmp_path, data_root, overrides, kind)
    assert summary["status"] == "completed"
    assert summary["step"] == 2
    assert set(summary["final"]) >= {"Loss/D", "Loss/G", "Output/D_real", "Output/D_fake", "Speed/images_per_second"}
    assert (tmp_path / "run" / CHECKPOINT).exists()
    assert (tmp_path / "run" / "samples" / "step_0000002.png").exists()


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("model", MODELS)
def test_every_regularizer_combines_with_any_loss(tmp_path, data_root, model, regularizer):
    summary = run(tmp_path, data_root, [f"model={model}", "loss=hinge", f"regularizer={regularizer}"] + TINY[model])
    assert summary["status"] == "completed"
    expected = {"gradient-penalty": {"Regularizer/gradient_penalty"}}.get(regularizer, set())
    assert {k for k in summary["final"] if k.startswith("Regularizer/")} == expected


def test_weight_clipping_bounds_the_critic(tmp_path, data_root):
    run(tmp_path, data_root, ["loss=wgan", "regularizer.clip=0.005"])
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    d_weights = [v for k, v in state["model"].items() if k.startswith("discriminator.")]
    assert max(w.abs().max().item() for w in d_weights) <= 0.005 + 1e-7


def test_tensorboard_holds_scalars_grids_config_and_hparams(tmp_path, data_root):
    run(tmp_path, data_root, ["loss=wgan-gp", "train.steps=4", "log.every=2", "log.sample_every=2"])
    run_dir = tmp_path / "run"
    accumulator = events(run_dir)
    tags = accumulator.Tags()
    for tag in [
        "Loss/D",
        "Loss/G",
        "Output/D_real",
        "Output/D_fake",
        "Regularizer/gradient_penalty",
        "Speed/steps_per_second",
        "Speed/images_per_second",
    ]:
        assert [s.step for s in accumulator.Scalars(tag)] == [2, 4], tag
    assert {"Samples/real", "Samples/fixed_noise"} <= set(tags["images"])
    assert [i.step for i in accumulator.Images("Samples/fixed_noise")] == [2, 4]
    assert "config/text_summary" in tags["tensors"]
    assert not any(tag.startswith("Final/") for tag in tags["scalars"])  # HPARAMS reads the runs' own series
    assert set(accumulator.PluginTagToContent("hparams")) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    # hparams go into the run's own event file: no timestamped subfolder holding events
    assert len(list(run_dir.rglob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "real.png",
        "step_0000002.png",
        "step_0000004.png",
    ]
    assert (run_dir / "config.yaml").read_text().count("_target_: ganlab.losses.Wasserstein") == 1


def test_resume_continues_bit_identically(tmp_path, data_root):
    common = ["loss=lsgan", "train.d_steps=2", "train.checkpoint_every=2", "train.ema_decay=0.9"]
    run(tmp_path, data_root, common + ["train.steps=6"], name="straight")
    run(tmp_path, data_root, common + ["train.steps=3"], name="split")
    summary = run(tmp_path, data_root, common + ["train.steps=6", "train.resume=true"], name="split")
    assert summary["step"] == 6
    straight = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=False)
    split = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, split["model"][name]), name
    for name, tensor in straight["ema"].items():
        assert torch.equal(tensor, split["ema"][name]), name
    assert sorted(s.step for s in events(tmp_path / "split").Scalars("Loss/D")) == [1, 2, 3, 4, 5, 6]


def test_time_budget_stops_cleanly_and_saves(tmp_path, data_root):
    summary = run(tmp_path, data_root, ["train.steps=100000", "train.max_seconds=1", "log.every=10"])
    assert summary["status"] == "time_budget"
    assert 1 <= summary["step"] < 100000
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["step"] == summary["step"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "time_budget"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_root, monkeypatch):
    calls = {"n": 0}
    original = losses.LeastSquares.g_loss

    def g_loss_turning_nan(self, fake_logits, real_logits=None):
        calls["n"] += 1
        value = original(self, fake_logits, real_logits)
        return value * float("nan") if calls["n"] > 4 else value

    monkeypatch.setattr(losses.LeastSquares, "g_loss", g_loss_turning_nan)
    summary = run(tmp_path, data_root, ["loss=lsgan", "train.steps=10", "train.checkpoint_every=2"])
    assert summary["status"] == "diverged"
    assert summary["step"] == 5
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["step"] == 4
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.batch_size=0", "train.batch_size"),
        ("train.lr=-0.001", "train.g_lr"),
        ("train.d_lr=-1", "train.d_lr"),
        ("train.d_steps=-1", "train.d_steps"),
        ("train.g_betas=[0.5,1.5]", "train.g_betas"),
        ("log.every=0", "log.every"),
        ("model.z_dim=0", "model.z_dim"),
        ("model.output=relu", "model.output"),
        ("model.d_hidden=0", "model.d_hidden"),
        ("model.d_dropout=1.0", "model.d_dropout"),
    ],
)
def test_bad_values_are_rejected_with_the_key(tmp_path, data_root, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(tmp_path, data_root, [override])
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_mlp_discriminator_has_its_own_width_and_dropout():
    cfg = compose_config(["model=mlp", "model.hidden=32", "model.d_hidden=8", "model.d_dropout=0.5"])
    model = build(cfg.model, "model", channels=1, image_size=28)

    def widths(net: torch.nn.Module) -> list[int]:
        return [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]

    assert widths(model.generator) == [32, 784] and widths(model.discriminator) == [8, 1]
    dropouts = [m.p for m in model.discriminator.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.5] and not any(isinstance(m, torch.nn.Dropout) for m in model.generator.modules())
    plain = build(compose_config(["model=mlp", "model.hidden=32"]).model, "model", channels=1, image_size=28)
    assert widths(plain.discriminator) == [32, 1]  # d_hidden=null: D as wide as G


def test_dcgan_rejects_an_image_size_it_cannot_make(tmp_path, data_root):
    with pytest.raises(ConfigError, match=r"dataset\.image_size=48.*32, 64"):
        run(tmp_path, data_root, ["model=dcgan", "dataset.image_size=48"])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_and_loss_trains_on_mnist_with_no_other_override(tmp_path, data_root, model, loss):
    """The newcomer's first commands: only the group choices, at each model's default size."""
    overrides = [f"model={model}", f"loss={loss}", f"dataset.root={data_root}"]
    quick = ["train.steps=2", "train.batch_size=4", "eval.enabled=false", "log.progress=false", "device.threads=1"]
    cfg = compose_config(overrides + quick)
    assert train(cfg, tmp_path / "run")["status"] == "completed"


def test_dcgan_on_mnist_trains_at_the_nearest_size_it_builds_and_says_so(tmp_path, data_root, caplog):
    caplog.set_level("INFO", logger="ganlab")
    run(tmp_path, data_root, ["model=dcgan"] + TINY["dcgan"])
    assert "image_size: 32" in (tmp_path / "run" / "config.yaml").read_text()
    said = [r.getMessage() for r in caplog.records if "training at 32 px" in r.getMessage()]
    assert len(said) == 1 and "28" in said[0]
    run(tmp_path, data_root, ["model=mlp"], name="mlp")  # a model that builds any size keeps the native 28
    assert "image_size: 28" in (tmp_path / "mlp" / "config.yaml").read_text()


def test_metrics_are_curves_by_default(tmp_path, data_root):
    """About eval.times evaluations over a run of known length, each before the final one on fewer samples."""
    run(tmp_path, data_root, ["train.steps=600", "log.every=100", "log.sample_every=0", "eval.during_samples=8"])
    steps = [s.step for s in events(tmp_path / "run").Scalars("Metrics/fid")]
    assert steps == list(range(60, 601, 60))


def test_a_time_budget_run_gets_its_curve_and_counts_training_time_alone(tmp_path, data_root, monkeypatch):
    import ganlab.train

    original = ganlab.train.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(ganlab.train, "evaluate", slow_evaluate)
    summary = run(tmp_path, data_root, ["train.steps=10000000", "train.max_seconds=2", "log.every=10"])
    assert summary["status"] == "time_budget"
    points = events(tmp_path / "run").Scalars("Metrics/fid")
    assert len(points) >= 5
    assert 2 <= summary["seconds"] < 2.5  # the evaluations' 3 s and more are not training time
    assert summary["eval_seconds"] >= 0.3 * len(points)


def test_dataset_folders_are_saved_absolute_and_an_older_runs_relative_ones_still_resume(
    tmp_path, data_root, monkeypatch
):
    monkeypatch.chdir(data_root)
    relative = ["dataset=folder", "dataset.root=folder", "dataset.test_root=folder", "dataset.image_size=8"]
    cfg = compose_config(QUICK + relative + ["model.hidden=16", "eval.num_samples=8", "train.checkpoint_every=1"])
    train(cfg, tmp_path / "run")
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert f"root: {data_root / 'folder'}\n" in saved and f"test_root: {data_root / 'folder'}\n" in saved
    (tmp_path / "run" / "metrics.json").unlink()  # interrupted after its checkpoint, as saved by an older ganlab:
    (tmp_path / "run" / "config.yaml").write_text(saved.replace(str(data_root / "folder"), "folder"))
    cfg.train.steps = 3
    assert train(cfg, tmp_path / "run")["step"] == 3  # the same folders, spelt relative: continued, not refused


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm draws its bar."""

    def isatty(self) -> bool:
        return True


def test_the_progress_bar_counts_towards_the_budget_that_will_stop_the_run(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", Terminal())
    values = {"Loss/D": 1.0, "Loss/G": 1.0, "Speed/steps_per_second": 100.0}
    by_time = Progress(steps=10_000_000, max_seconds=120, start=0, enabled=True)
    by_time.update(3000, 30.0, values)  # 1/4 of the seconds, a tiny share of the steps: time stops this run
    assert (by_time.bar.total, by_time.bar.n, by_time.bar.unit) == (120, 30, "s")
    by_steps = Progress(steps=5000, max_seconds=3600, start=0, enabled=True)
    by_steps.update(2500, 30.0, values)  # half the steps in 30 of 3600 seconds: the steps stop it
    assert (by_steps.bar.total, by_steps.bar.n, by_steps.bar.unit) == (5000, 2500, "step")
    by_time.close(), by_steps.close()

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # no terminal (a sweep, CI): a log line per read
    with caplog.at_level("INFO", logger="ganlab"):
        Progress(steps=10_000_000, max_seconds=120, start=0, enabled=True).update(3000, 30.0, values)
    assert "step 3000 (30/120 s)" in caplog.text


def test_ema_ramps_up_then_keeps_its_decay():
    from ganlab.step import ema_average

    generator = torch.nn.Linear(1, 1, bias=False)
    ramped = [max(0.0, min(0.9, 1 - 1 / (0.5 * t))) for t in range(1, 40)]  # 0, 0, 1/3, 1/2, ..., then 0.9
    for rampup, decays in [(0.5, ramped), (0.0, [0.9] * 39)]:
        averaged = AveragedModel(generator, multi_avg_fn=ema_average(0.9, rampup))
        with torch.no_grad():
            generator.weight.fill_(0.0)
        averaged.update_parameters(generator)  # the first update copies G
        expected = 0.0
        for step, decay in enumerate(decays, start=1):
            with torch.no_grad():
                generator.weight.fill_(float(step))
            averaged.update_parameters(generator)
            expected = decay * expected + (1 - decay) * step
        assert averaged.module.weight.item() == pytest.approx(expected, rel=1e-5), rampup


def test_missing_dataset_names_the_files_and_the_key(tmp_path, data_root):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*dataset\.root"):
        run(tmp_path, tmp_path / "nowhere", [])


def test_existing_run_is_never_overwritten(tmp_path, data_root):
    run(tmp_path, data_root, [])
    checkpoint = (tmp_path / "run" / CHECKPOINT).read_bytes()
    with pytest.raises(CheckpointError, match=r"train\.resume=false"):
        run(tmp_path, data_root, ["train.steps=4", "train.resume=false"])
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == checkpoint


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, data_root):
    run(tmp_path, data_root, ["train.steps=4", "train.checkpoint_every=2"])
    (tmp_path / "run" / CHECKPOINT).write_bytes(b"not a checkpoint")
    summary = run(tmp_path, data_root, ["train.steps=6", "train.resume=true"])
    assert summary["step"] == 6


def test_corrupt_checkpoint_without_a_previous_one_is_a_clear_error(tmp_path, data_root):
    run(tmp_path, data_root, [])
    (tmp_path / "run" / PREVIOUS).unlink(missing_ok=True)
    (tmp_path / "run" / CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"unreadable.*delete it"):
        run(tmp_path, data_root, ["train.steps=4", "train.resume=true"])
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == b"garbage"


def test_unwritable_run_dir_is_a_clear_error(tmp_path, data_root):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write to the run dir"):
        train(compose_config(QUICK + dataset_overrides("mnist", data_root)), blocker / "run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so device=cuda is valid")
def test_cuda_without_a_gpu_says_so(tmp_path, data_root):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        run(tmp_path, data_root, ["device=cuda"])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_runs(tmp_path, data_root, experiment):
    kind = next((k for k in ("cifar10", *TOY_KINDS) if k in experiment), "mnist")
    summary = run(
        tmp_path,
        data_root,
        [f"experiment={experiment}", "train.steps=1", "train.batch_size=2", "log.num_samples=2"],
        kind,
    )
    assert summary["status"] == "completed"
    # what a sweep of the preset minimises is a metric its runs compute
    assert compose_config([f"experiment={experiment}"]).eval.objective in summary["metrics"]


RECIPES = {
    "lsgan_mlp_mnist": {
        "model._target_": "ganlab.models.mlp.MLP",
        "model.z_dim": 64,
        "model.hidden": 128,
        "model.depth": 1,
        "model.init": "xavier",
        "model.noise": "uniform",
        "model.output": "sigmoid",
        "loss._target_": "ganlab.losses.LeastSquares",
        "train.batch_size": 32,
        "train.d_steps": 3,
        "train.g_lr": 1e-3,
        "train.d_lr": 1e-3,
        "dataset._target_": "ganlab.data.MNIST",
    },
    "fgan_mlp_mnist": {
        "model.z_dim": 10,
        "model.hidden": 128,
        "loss._target_": "ganlab.losses.ReverseKL",
        "train.batch_size": 32,
        "train.d_steps": 1,
        "train.g_lr": 1e-3,
    },
    "dcgan_mnist": {
        "model._target_": "ganlab.models.dcgan.DCGAN",
        "dataset.image_size": 64,
        "model.d_norm": "batch",
        "model.z_dim": 100,
        "loss._target_": "ganlab.losses.NonSaturating",
        "train.batch_size": 64,
        "train.g_lr": 2e-4,
        "train.g_betas": [0.5, 0.999],
        "train.d_betas": [0.5, 0.999],
    },
    "dcgan_cifar10": {
        "dataset._target_": "ganlab.data.CIFAR10",
        "dataset.image_size": 64,
        "train.batch_size": 128,
        "train.d_lr": 2e-4,
        "train.d_betas": [0.5, 0.999],
    },
    "best_mlp_mnist": {
        "model.hidden": 1536,
        "model.d_hidden": 512,
        "model.depth": 1,
        "train.g_lr": 2e-3,
        "train.d_lr": 1e-3,
        "train.ema_decay": 0.9995,
        "train.batch_size": 64,
        "eval.objective": "fid_ema",
    },
    "cgan_mlp_mnist": {
        "model.conditional": True,
        "model.g_condition": "cbn",
        "model.d_condition": "acgan",
        "model.class_weight": 2.0,
        "loss._target_": "ganlab.losses.Hinge",
        "model.spectral_norm": False,
        "dataset._target_": "ganlab.data.MNIST",
    },
    "cgan_dcgan_mnist": {
        "model._target_": "ganlab.models.dcgan.DCGAN",
        "model.conditional": True,
        "model.d_condition": "projection",
        "model.spectral_norm": True,
        "model.d_norm": "none",
        "loss._target_": "ganlab.losses.Hinge",
        "dataset._target_": "ganlab.data.MNIST",
    },
    "sngan_dcgan_cifar10": {
        "model.conditional": False,
        "model.spectral_norm": True,
        "model.d_norm": "none",
        "loss._target_": "ganlab.losses.Hinge",
        "train.g_lr": 2e-4,
        "train.d_lr": 2e-4,
        "train.g_betas": [0.0, 0.9],
        "train.d_betas": [0.0, 0.9],
        "train.d_steps": 5,
        "train.batch_size": 64,
        "train.lr_schedule": "linear",
        "dataset._target_": "ganlab.data.CIFAR10",
    },
    "cgan_pd_dcgan_cifar10": {
        "model.conditional": True,
        "model.d_condition": "projection",
        "model.spectral_norm": True,
        "loss._target_": "ganlab.losses.Hinge",
        "train.d_betas": [0.0, 0.9],
        "train.d_steps": 5,
        "train.batch_size": 64,
        "train.lr_schedule": "linear",
        "dataset._target_": "ganlab.data.CIFAR10",
    },
    # mimicry's sngan_32 and cgan_pd_32 (Miyato et al. 2018's ResNet and widths)
    "sngan_resnet_cifar10": {
        "model._target_": "ganlab.models.resnet.ResNet",
        "model.conditional": False,
        "model.spectral_norm": True,
        "model.z_dim": 128,
        "model.g_width": 256,
        "model.d_width": 128,
        "loss._target_": "ganlab.losses.Hinge",
        "train.steps": 100000,
        "train.g_lr": 2e-4,
        "train.d_lr": 2e-4,
        "train.g_betas": [0.0, 0.9],
        "train.d_betas": [0.0, 0.9],
        "train.d_steps": 5,
        "train.batch_size": 64,
        "train.lr_schedule": "linear",
        "dataset._target_": "ganlab.data.CIFAR10",
    },
    "cgan_pd_resnet_cifar10": {
        "model._target_": "ganlab.models.resnet.ResNet",
        "model.conditional": True,
        "model.d_condition": "projection",
        "model.spectral_norm": True,
        "loss._target_": "ganlab.losses.Hinge",
        "train.d_betas": [0.0, 0.9],
        "train.d_steps": 5,
        "train.lr_schedule": "linear",
        "dataset._target_": "ganlab.data.CIFAR10",
    },
    "ring8_mlp": {"dataset._target_": "ganlab.toy.Ring", "model.output": "tanh"},
    "grid25_mlp": {"dataset._target_": "ganlab.toy.Grid", "model.output": "tanh"},
    "wgan_gp_dcgan_mnist": {
        "loss._target_": "ganlab.losses.Wasserstein",
        "regularizer._target_": "ganlab.regularizers.GradientPenalty",
        "regularizer.weight": 10.0,
        "model.d_norm": "instance",
        "train.d_steps": 5,
        "train.g_betas": [0.5, 0.9],
        "train.d_betas": [0.5, 0.9],
        "train.d_lr": 2e-4,
        "dataset.image_size": 64,
    },
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_holds_its_exact_recipe(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    for key, expected in RECIPES[experiment].items():
        section, name = key.split(".")
        value = cfg[section][name]
        assert (list(value) if not isinstance(value, (str, int, float)) else value) == expected, key


@pytest.mark.parametrize("model", MODELS)
def test_ema_generator_averages_the_generator_and_is_sampled(tmp_path, data_root, model):
    no_rampup = ["train.ema_decay=0.9", "train.ema_rampup=0", "train.steps=3"]  # else the EMA is still G at step 3
    run(tmp_path, data_root, [f"model={model}", *no_rampup] + TINY[model], name="slow")
    state = torch.load(tmp_path / "slow" / CHECKPOINT, weights_only=False)
    generator = {k.removeprefix("generator."): v for k, v in state["model"].items() if k.startswith("generator.")}
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    assert generator.keys() == ema.keys()
    assert any(not torch.allclose(generator[k].float(), ema[k].float()) for k in generator)
    assert "Samples/fixed_noise_ema" in events(tmp_path / "slow").Tags()["images"]
    assert (tmp_path / "slow" / "samples" / "ema_0000003.png").exists()

    run(tmp_path, data_root, [f"model={model}", "train.ema_decay=1e-9", "train.steps=3"] + TINY[model], name="fast")
    state = torch.load(tmp_path / "fast" / CHECKPOINT, weights_only=False)
    for name, value in state["ema"].items():
        if name.startswith("module.") and value.is_floating_point():  # a decay of ~0 follows G exactly
            torch.testing.assert_close(value, state["model"]["generator." + name.removeprefix("module.")])


def test_the_sweep_objective_is_minimised_so_higher_is_better_metrics_are_negated():
    from ganlab.train import objective

    summary = {"status": "completed", "metrics": {"fid": 12.5, "precision_ema": 0.8}}
    assert objective(summary, "fid") == 12.5
    assert objective(summary, "precision_ema") == -0.8
    assert objective(summary | {"status": "diverged"}, "fid") == float("inf")
