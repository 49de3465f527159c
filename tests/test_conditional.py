"""Class-conditional GANs (issue 14) through the real code path: every conditional model with every loss, the blocks'
own initialisation, the projection's use of the label, spectral norm, the per-class sample grid and the schedule.

The conditional variants are found from the code and conf/ (models, generator and discriminator conditionings,
losses), so a new option is tested without editing this file.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATASET_KINDS, TOY_KINDS, compose_config, dataset_overrides
from PIL import Image
from test_train import TINY, run

from ganlab.checkpoint import load_checkpoint
from ganlab.config import build, resolve_image_size
from ganlab.errors import ConfigError
from ganlab.models.conditional import D_CONDITIONS, ConditionalBatchNorm
from ganlab.models.mlp import G_CONDITIONS
from ganlab.step import build_gan, build_model, train_step

pytestmark = pytest.mark.usefixtures("one_thread")

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
CPU = torch.device("cpu")


def g_conditions(model: str) -> list[str]:
    """The ways the model's generator can take the label: the MLP chooses (model.g_condition), DCGAN has one."""
    return [f"model.g_condition={g}" for g in G_CONDITIONS] if model == "mlp" else [""]


# (model, g_condition override, d_condition): every conditional variant
VARIANTS = [(m, g, d) for m in MODELS for g in g_conditions(m) for d in D_CONDITIONS]
VARIANT_IDS = [f"{m}-{g.rpartition('=')[2] or 'cbn'}-{d}" for m, g, d in VARIANTS]


def conditional(model: str, g_condition: str, d_condition: str) -> list[str]:
    return (
        [f"model={model}", "model.conditional=true", f"model.d_condition={d_condition}"]
        + TINY[model]
        + ([g_condition] if g_condition else [])
    )


def gan_of(overrides: list[str], kind: str = "ring8", root=None):
    """The built GAN and data source of a composed config."""
    cfg = compose_config(dataset_overrides(kind, root) + ["device=cpu"] + overrides)
    resolve_image_size(cfg)
    source = build(cfg.dataset, "dataset")
    return cfg, source, build_gan(cfg, CPU, source.num_classes)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_every_loss_trains_with_every_conditional_model(tmp_path, data_root, variant, loss):
    summary = run(tmp_path, data_root, conditional(*variant) + [f"loss={loss}"])
    assert (summary["status"], summary["step"]) == ("completed", 2)
    assert ("Loss/D_class" in summary["final"]) == (variant[2] == "acgan")
    assert {"accuracy", "accuracy_min", "intra_fid", "fid"} <= set(summary["metrics"])


# DCGAN builds images, not 2-D points (a one-sentence error, tested in test_train)
@pytest.mark.parametrize(
    "model,kind", [(m, k) for m in MODELS for k in DATASET_KINDS if m == "mlp" or k not in TOY_KINDS]
)
def test_a_conditional_model_trains_on_every_labelled_dataset(tmp_path, data_root, model, kind):
    overrides = conditional(model, g_conditions(model)[0], "projection") + ["loss=hinge"]
    summary = run(tmp_path, data_root, overrides, kind)
    assert summary["status"] == "completed"
    state = load_checkpoint(tmp_path / "run")
    assert state["fixed_labels"] is not None and state["fixed_labels"].max() >= 1


@pytest.mark.parametrize("model", MODELS)
def test_conditional_batchnorm_starts_at_gain_1_and_bias_0_after_the_model_init(model):
    overrides = [f"model={model}", "model.conditional=true", "dataset.image_size=32"]
    overrides += ["model.g_condition=cbn", "model.init=xavier"] if model == "mlp" else []  # its init must pass too
    cfg = compose_config(overrides)
    blocks = [m for m in build_model(cfg, num_classes=10).modules() if isinstance(m, ConditionalBatchNorm)]
    assert blocks, "no conditional BatchNorm in the generator"
    for block in blocks:
        gain, bias = block.embed.weight.detach().chunk(2, dim=1)
        assert gain.shape[0] == 10 and abs(float(gain.mean()) - 1) < 0.01 and float(gain.std()) < 0.05
        assert torch.equal(bias, torch.zeros_like(bias))


@pytest.mark.parametrize("model", MODELS)
def test_the_projection_discriminator_gives_one_logit_per_image_and_uses_the_label(model):
    cfg = compose_config([f"model={model}", "model.conditional=true", "dataset.image_size=32"] + TINY[model])
    D = build_model(cfg, num_classes=10).discriminator.eval()
    x = torch.rand(6, 1, 32, 32) * 2 - 1 if model == "dcgan" else torch.rand(6, 1, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    logits = D(x, y)
    assert logits.shape == (6,)
    changed = D(x, (y + 1) % 10)
    assert not torch.allclose(logits, changed)
    assert torch.equal(logits, D(x, y))  # the same label, the same logit


def test_the_acgan_class_loss_is_weighted_and_joins_both_losses():
    losses = {}
    for weight in (0.0, 1.0, 2.0):
        torch.manual_seed(0)
        cfg, source, gan = gan_of(["model.conditional=true", "model.d_condition=acgan", f"model.class_weight={weight}"])
        batches = source.batches(CPU, gan.model.output_range, 8)
        losses[weight] = {k: float(v.detach()) for k, v in train_step(gan, batches, 8, 1).items()}
    assert losses[0.0]["Loss/D_class"] == 0 and losses[0.0]["Loss/G_class"] == 0
    assert losses[2.0]["Loss/D_class"] == pytest.approx(2 * losses[1.0]["Loss/D_class"], rel=1e-5)
    assert losses[1.0]["Loss/D_class"] > losses[1.0]["Loss/G_class"] > 0  # D's is on real and fake, G's on fake


def largest_singular_values(discriminator: torch.nn.Module) -> list[float]:
    """The largest singular value of the weight every weighted layer of D uses (a conv's as a matrix)."""
    values = []
    for layer in discriminator.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)):
            values.append(float(torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)))
    return values


@pytest.mark.parametrize("conditioned", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("model", MODELS)
def test_spectral_norm_keeps_the_largest_singular_value_of_every_d_layer_at_1(tmp_path, data_root, model, conditioned):
    overrides = [f"model={model}", f"model.conditional={conditioned}", "loss=hinge", "train.lr=0.01"] + TINY[model]
    sigmas = {}
    for normed in (False, True):
        torch.manual_seed(0)
        _, source, gan = gan_of(overrides + [f"model.spectral_norm={normed}"], "mnist", data_root)
        batches = source.batches(CPU, gan.model.output_range, 8)
        for _ in range(5):
            train_step(gan, batches, 8, 1)
        gan.model.discriminator.eval()  # read the weight as used, without another power iteration
        sigmas[normed] = largest_singular_values(gan.model.discriminator)
    assert len(sigmas[True]) >= 2
    assert all(abs(s - 1) < 0.05 for s in sigmas[True]), sigmas[True]
    assert not all(abs(s - 1) < 0.05 for s in sigmas[False])  # without it they are not: the check can fail


def test_a_conditional_model_on_a_dataset_without_classes_is_one_sentence(tmp_path, data_root):
    one_class = tmp_path / "one_class"
    (one_class / "only").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(one_class / "only" / f"{i}.png")
    with pytest.raises(ConfigError, match="model.conditional=true needs a dataset with class labels"):
        build_gan(compose_config(["model.conditional=true", "dataset=folder", f"dataset.root={one_class}"]), CPU, 0)
    command = [sys.executable, "-m", "ganlab.train", "model.conditional=true", "dataset=folder",
               f"dataset.root={one_class}", "dataset.image_size=32", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "ganlab: error: model.conditional=true needs a dataset with class labels, but this one has 1"
    )
    assert not (tmp_path / "run").exists()  # a run that could not start leaves no folder


@pytest.mark.parametrize("model", MODELS)
def test_the_sample_grid_of_a_conditional_run_has_one_row_per_class(tmp_path, data_root, model):
    overrides = [f"model={model}", "model.conditional=true", "log.num_samples=20"] + TINY[model]
    run(tmp_path, data_root, overrides)
    grid = Image.open(tmp_path / "run" / "samples" / "step_0000002.png")
    size = 28 if model == "mlp" else 32  # the convolutional models build 32 px, the nearest to MNIST's 28
    assert grid.size == (2 * (size + 2) + 2, 10 * (size + 2) + 2)  # 2 columns, 10 rows, make_grid's 2 px padding
    state = load_checkpoint(tmp_path / "run")
    noise, labels = state["fixed_noise"], state["fixed_labels"]
    assert labels.tolist() == [k for k in range(10) for _ in range(2)]
    assert torch.equal(noise[0::2], noise[:1].expand(10, -1)) and torch.equal(noise[1::2], noise[1:2].expand(10, -1))
    assert not torch.equal(noise[0], noise[1])


def test_the_linear_schedule_decays_both_learning_rates_to_0_at_the_last_step():
    cfg, source, gan = gan_of(["train.lr_schedule=linear", "train.steps=4", "train.lr=1e-3"])
    batches = source.batches(CPU, gan.model.output_range, 8)
    rates = []
    for _ in range(4):
        train_step(gan, batches, 8, 1)
        rates += [gan.g_opt.param_groups[0]["lr"], gan.d_opt.param_groups[0]["lr"]]
    assert rates == pytest.approx([7.5e-4, 7.5e-4, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 0.0, 0.0])
    constant = gan_of(["train.steps=4", "train.lr=1e-3"])[2]
    assert constant.schedulers == []


@pytest.mark.parametrize("value", ["cosine", "model.d_condition=softmax", "model.g_condition=film"])
def test_bad_conditioning_values_are_one_sentence_naming_the_key(tmp_path, data_root, value):
    override = value if "=" in value else f"train.lr_schedule={value}"
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(tmp_path, data_root, ["model.conditional=true", override])


def ganlab(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    entry = {"sample": "sample", "eval": "evaluate"}[command]  # the console scripts' functions (ganlab.entry)
    code = f"import sys; from ganlab.entry import {entry} as main; sys.argv[0] = 'ganlab-{command}'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, data_root):
    """A 2-step conditional MLP run on the fixture MNIST, with an EMA generator."""
    root = tmp_path_factory.mktemp("conditional")
    run(root, data_root, ["model.conditional=true", "train.ema_decay=0.9"] + TINY["mlp"])
    return root / "run"


def test_sample_class_k_gives_n_samples_labelled_k_and_balanced_classes_without_it(tmp_path, conditional_run):
    result = ganlab("sample", str(conditional_run), "n=30", "class=3", f"out={tmp_path / 'three.npz'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    three = np.load(tmp_path / "three.npz")
    assert three["images"].shape == (30, 1, 28, 28) and three["labels"].tolist() == [3] * 30
    result = ganlab("sample", str(conditional_run), "n=30", f"out={tmp_path / 'all.npz'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert np.bincount(np.load(tmp_path / "all.npz")["labels"]).tolist() == [3] * 10


def test_class_k_samples_are_what_the_generator_makes_for_label_k(tmp_path, conditional_run, data_root):
    """The class asked for reaches G: the file's images are G(z, K) for the sampler's seeded z."""
    result = ganlab("sample", str(conditional_run), "n=8", "class=7", "weights=raw", f"out={tmp_path / 's.npz'}",
                    cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    from ganlab.cli import load_run
    from ganlab.data import to_uint8
    from ganlab.evaluate import generate

    _, model, _, _ = load_run(conditional_run, "cpu")
    for label, same in ((7, True), (2, False)):
        samples, _ = generate(model.generator, model, 8, 0, torch.full((8,), label))
        written = torch.from_numpy(np.load(tmp_path / "s.npz")["images"])
        assert torch.equal(to_uint8(samples, model.output_range), written) == same


@pytest.mark.parametrize("option", ["class=10", "class=-1", "class=x"])
def test_a_class_the_run_does_not_have_is_one_sentence(tmp_path, conditional_run, option):
    result = ganlab("sample", str(conditional_run), "n=4", option, f"out={tmp_path / 's.npz'}", cwd=tmp_path)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ganlab: error: {option} is not a class of the run") and "use 0 to 9" in line
    assert not (tmp_path / "s.npz").exists()


def test_class_on_an_unconditional_run_is_one_sentence_and_its_labels_are_minus_1(tmp_path, data_root):
    run(tmp_path, data_root, TINY["mlp"])
    result = ganlab("sample", str(tmp_path / "run"), "n=4", "class=0", f"out={tmp_path / 's.npz'}", cwd=tmp_path)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "is unconditional" in line and "drop class=" in line
    result = ganlab("sample", str(tmp_path / "run"), "n=4", f"out={tmp_path / 's.npz'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "s.npz")["labels"].tolist() == [-1] * 4


def test_ganlab_eval_scores_a_conditional_run_and_its_class_file(tmp_path, conditional_run, data_root):
    result = ganlab("eval", str(conditional_run), "n=40", f"dataset.root={data_root}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert {"accuracy", "accuracy_min", "intra_fid", "accuracy_ema", "intra_fid_ema"} <= set(scores)
    ganlab("sample", str(conditional_run), "n=20", "class=1", f"out={tmp_path / 'one.npz'}", cwd=tmp_path)
    result = ganlab("eval", str(tmp_path / "one.npz"), f"dataset.root={data_root}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    one = json.loads(result.stdout)
    assert one["accuracy"] == one["accuracy_min"]  # one class asked for: the mean is that class's share
