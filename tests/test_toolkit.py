"""The modern toolkit: R1/R2 and LeCam penalties, the relativistic loss, DiffAugment and ADA, and dataset.limit.

Each part is checked on its own (exact values where they are known in closed form), then through the real training
path, in every combination the config groups hold (found by globbing conf/), under resume and bit for bit.
"""

from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, TRAIN_COUNTS, compose_config, critic_step, dataset_overrides
from test_checkpoint import assert_same_training_state
from test_train import QUICK, TINY, run

from ganlab.augment import AdaptiveAugment, DiffAugment, cutout, translation
from ganlab.config import build, resolve_image_size
from ganlab.distributed import Runtime
from ganlab.errors import ConfigError
from ganlab.models.conditional import ConditionalBatchNorm, Discriminator
from ganlab.regularizers import R1, R2, LeCam
from ganlab.step import build_gan
from ganlab.sweep import command_folder
from ganlab.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
PENALTIES = sorted(p.stem for p in (CONF / "penalty").glob("*.yaml"))
AUGMENTS = sorted(p.stem for p in (CONF / "augment").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
CPU = torch.device("cpu")


class Quadratic(Discriminator):
    """D(x) = <w, x> + a/2 ||x||^2, whose input gradient is w + a x: known in closed form."""

    def __init__(self, size: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(size))
        self.a = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x, y=None):
        x = x.flatten(1)
        return x @ self.w + self.a / 2 * x.pow(2).sum(1)


@pytest.mark.parametrize("penalty", [R1, R2])
def test_r1_and_r2_are_gamma_half_the_squared_gradient_norm(penalty):
    torch.manual_seed(0)
    critic, real, fake = Quadratic(12), torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)
    value = penalty(gamma=3.0).penalty(critic_step(critic, real, fake))[penalty.__name__.lower()]
    images = real if penalty is R1 else fake
    gradients = critic.w + critic.a * images.flatten(1)
    torch.testing.assert_close(value, 3.0 / 2 * gradients.pow(2).sum(1).mean(), rtol=1e-5, atol=1e-5)


def test_the_lazy_penalty_gives_the_eager_gradient_on_average():
    """every=4: the penalty on one update in four, times four: over four updates, the eager gradient."""
    torch.manual_seed(0)
    critic, real, fake = Quadratic(12), torch.randn(6, 12), torch.randn(6, 12)

    def summed_gradient(penalty: R1) -> torch.Tensor:
        total = torch.zeros(12)
        for index in range(8):
            terms = penalty.penalty(critic_step(critic, real, fake, index=index))
            if terms:
                (gradient,) = torch.autograd.grad(sum(terms.values()), critic.w)
                total += gradient
        return total

    lazy = R1(gamma=2.0, every=4)
    assert [bool(lazy.penalty(critic_step(critic, real, fake, index=i))) for i in range(5)] == [1, 0, 0, 0, 1]
    torch.testing.assert_close(summed_gradient(lazy), summed_gradient(R1(gamma=2.0)), rtol=1e-5, atol=1e-5)


def test_lecam_pulls_towards_the_other_sides_moving_average_and_keeps_it():
    lecam = LeCam(weight=2.0, decay=0.5)
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    step = critic_step(lambda x, y: x, real, fake)
    value = lecam.penalty(step)["lecam"]  # averages start at the first means: a_R = 2, a_F = -1
    expected = 2.0 * (torch.relu(real + 1).pow(2).mean() + torch.relu(2 - fake).pow(2).mean())
    torch.testing.assert_close(value, expected)
    lecam.penalty(critic_step(lambda x, y: x, real + 4, fake))  # a_R = 0.5 * 2 + 0.5 * 6 = 4
    torch.testing.assert_close(lecam.averages, torch.tensor([4.0, -1.0]))
    restored = LeCam(weight=2.0, decay=0.5)
    restored.load_state_dict(lecam.state_dict())
    torch.testing.assert_close(restored.penalty(step), lecam.penalty(step))


def test_translation_and_cutout_move_and_cut_what_the_ratio_says_and_pass_gradients():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 16, 16) + 1  # all positive: padding and the cut square are the only zeros
    x.requires_grad_(True)
    shifted = translation(x, 0.125)  # up to 2 pixels each way
    zero_rows = (shifted.detach()[:, 0] == 0).all(dim=2).sum(1)
    assert zero_rows.max() == 2 and zero_rows.min() == 0 and (zero_rows > 0).any()
    cut = cutout(x, 0.5)  # an 8 x 8 square, clipped at the border
    zeros = (cut.detach() == 0).flatten(1).sum(1)
    assert zeros.max() == 64 and (zeros > 0).all()
    (gradient,) = torch.autograd.grad((shifted.sum() + cut.sum()), x)
    assert gradient.abs().sum() > 0


def test_diffaugment_maps_to_the_papers_range_and_back():
    """On [0, 1] data the operations work as on the paper's [-1, 1]: an empty policy, or no shift, changes nothing."""
    augment = DiffAugment(policy=[])
    augment.prepare((1, 8, 8), (0.0, 1.0), flip_keeps_class=False, is_image=True)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(augment(x), x)
    augment = DiffAugment(policy=["cutout"])
    augment.prepare((1, 8, 8), (0.0, 1.0), flip_keeps_class=False, is_image=True)
    cut = augment(torch.ones(4, 1, 8, 8))
    assert set(cut.unique().tolist()) == {0.5, 1.0}  # the cut square is the middle grey, as the paper's 0


def test_flip_is_dropped_where_it_changes_the_class(caplog):
    augment = DiffAugment(policy=["flip", "translation"])
    augment.prepare((1, 28, 28), (0.0, 1.0), flip_keeps_class=False, is_image=True)
    assert augment.policy == ["translation"] and "flip is dropped" in caplog.text
    kept = DiffAugment(policy=["flip"])
    kept.prepare((3, 32, 32), (-1.0, 1.0), flip_keeps_class=True, is_image=True)
    assert kept.policy == ["flip"]


def test_ada_raises_p_while_d_overfits_and_lowers_it_when_it_does_not():
    ada = AdaptiveAugment(policy=["translation"], interval=2, kimg=0.1)  # p moves by 2 * 50 / 100 = 1 per adjustment
    runtime = Runtime(CPU)
    confident, unsure = torch.ones(50), torch.tensor([1.0, -1.0] * 25)  # r_t = 1, then r_t = 0
    stats = [ada.observe(confident, runtime) for _ in range(2)][-1]
    assert float(stats["Augment/p"]) == 1.0 and float(stats["Augment/rt"]) == 1.0
    ada.kimg = 0.4  # a quarter step
    stats = [ada.observe(unsure, runtime) for _ in range(2)][-1]
    assert float(stats["Augment/p"]) == 0.75 and float(stats["Augment/rt"]) == 0.0
    torch.manual_seed(0)
    x = torch.rand(1000, 1, 8, 8) + 1
    ada.prepare((1, 8, 8), (0.0, 2.0), flip_keeps_class=False, is_image=True)
    changed = (ada(x) != x).flatten(1).any(1).float().mean()
    assert 0.62 < changed < 0.72  # p x 8/9: each image is shifted with probability p, by (0, 0) one time in 9
    restored = AdaptiveAugment(policy=["translation"])
    restored.load_state_dict(ada.state_dict())
    assert float(restored.p) == 0.75


def tiny_gan(overrides: list[str], data_root):
    cfg = compose_config(QUICK + TINY["dcgan"] + ["model=dcgan", *dataset_overrides("mnist", data_root), *overrides])
    resolve_image_size(cfg)
    source = build(cfg.dataset, "dataset")
    torch.manual_seed(0)
    return build_gan(cfg, CPU, source.num_classes, source=source), source


def test_d_sees_augmented_images_in_both_steps_and_the_penalties(data_root):
    gan, _ = tiny_gan(["augment=diffaugment", "augment.policy=[translation]"], data_root)
    seen = []
    gan.discriminator.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = torch.rand(8, 1, 32, 32) + 1
    gan.judge(x, None)
    assert (seen[-1] == 0).any() and not torch.equal(seen[-1], x)  # the D and G steps both call judge
    torch.manual_seed(1)
    augmented_logits = gan.logits_of(x, None)
    assert not torch.allclose(augmented_logits, gan.discriminator(x).reshape(-1))  # the penalties' view too


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("augment.policy=[color,zoom]", "augment.policy has the unknown operation 'zoom'"),
        ("penalty.r1.gamma=-1", "penalty.r1.gamma=-1"),
        ("penalty.r1.every=0", "penalty.r1.every=0"),
        ("dataset.limit=0", "dataset.limit=0"),
        (f"dataset.limit={TRAIN_COUNTS['mnist'] + 1}", "is more than the"),
    ],
)
def test_bad_toolkit_values_are_one_sentence(tmp_path, data_root, override, message):
    overrides = ["augment=ada", "penalty=r1", override]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        run(tmp_path, data_root, overrides)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_augmenting_points_or_too_small_images_is_one_sentence(tmp_path, data_root):
    with pytest.raises(ConfigError, match="samples are points: use augment=none"):
        run(tmp_path, data_root, ["augment=ada"], kind="ring8")
    with pytest.raises(ConfigError, match="moves no pixel"):
        run(tmp_path, data_root, ["augment=ada", "augment.translation=0.01"])


def test_the_limit_is_balanced_seeded_and_trained_on(tmp_path, data_root):
    cfg = compose_config(QUICK + dataset_overrides("mnist", data_root) + ["dataset.limit=20"])
    source = build(cfg.dataset, "dataset")
    labels = source.labels(source.checked_open(None))
    first, again, other = (source.chosen(len(labels), labels, seed) for seed in (0, 0, 1))
    assert len(first) == 20 and torch.equal(first, again) and not torch.equal(first, other)
    counts = torch.bincount(labels[first], minlength=10)
    assert counts.max() - counts.min() <= 1 or counts.min() == 0 and counts.sum() == 20
    batches = source.batches(CPU, (0.0, 1.0), 4, seed=0)
    assert len(batches) == 20


@pytest.mark.parametrize("augment", AUGMENTS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_every_penalty_and_augmentation_trains_a_conditional_dcgan_with_ema(tmp_path, data_root, penalty, augment):
    overrides = ["model=dcgan", *TINY["dcgan"], "model.conditional=true", "train.ema_decay=0.9", "loss=hinge",
                 f"penalty={penalty}", f"augment={augment}", "train.steps=3"]  # fmt: skip
    summary = run(tmp_path, data_root, overrides)
    assert summary["status"] == "completed"
    assert f"Regularizer/{penalty}" in summary["final"]
    assert ("Augment/p" in summary["final"]) == (augment == "ada")


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_takes_every_penalty_at_once(tmp_path, data_root, loss):
    overrides = [f"loss={loss}", "model.hidden=16", f"penalty=[{','.join(PENALTIES)}]", "device.precision=bf16"]
    summary = run(tmp_path, data_root, overrides)
    assert summary["status"] == "completed"
    assert {f"Regularizer/{name}" for name in PENALTIES} <= set(summary["final"])


def test_resume_with_ada_lecam_and_lazy_penalties_is_bit_identical(tmp_path, data_root):
    common = ["model=dcgan", *TINY["dcgan"], "loss=rpgan", "penalty=[r1,r2,lecam]", "penalty.r1.every=3",
              "penalty.r2.every=2", "augment=ada", "augment.p=0.5", "augment.interval=1", "train.d_steps=2",
              "train.checkpoint_every=3", "train.ema_decay=0.9"]  # fmt: skip
    run(tmp_path, data_root, common + ["train.steps=7"], name="straight")
    run(tmp_path, data_root, common + ["train.steps=3"], name="split")
    assert run(tmp_path, data_root, common + ["train.steps=7"], name="split")["step"] == 7
    assert_same_training_state(tmp_path / "straight", tmp_path / "split")
    straight, split = (
        torch.load(tmp_path / name / "checkpoint.pt", weights_only=True) for name in ("straight", "split")
    )
    assert straight["d_updates"] == split["d_updates"] == 14
    assert float(straight["augment"]["p"]) != 0.5 and torch.equal(straight["augment"]["p"], split["augment"]["p"])
    assert torch.equal(straight["regularizers"][-1]["averages"], split["regularizers"][-1]["averages"])


def test_the_limit_and_the_penalties_name_the_run_folder():
    """They change the result, so a run with them is a new folder, and resuming may not change them."""
    name = command_folder(
        ["ganlab-train", "dataset.limit=100", "penalty=[r1,lecam]", "augment=ada", "dataset.root=elsewhere"]
    )
    assert "dataset.limit=100" in name and "r1" in name and "augment=ada" in name and "elsewhere" not in name


def test_the_resnet_is_miyatos_with_its_widths():
    """SNGAN's CIFAR-10 ResNet: about 4.3M parameters in G and 1.1M in D (mimicry lists 4.3M and 1.0M), 32 px."""
    cfg = compose_config(["experiment=cgan_pd_resnet_cifar10"])
    model = build(cfg.model, "model", channels=3, image_size=32, num_classes=10).prepare(CPU)
    g_parameters = sum(p.numel() for p in model.generator.parameters())
    d_parameters = sum(p.numel() for p in model.discriminator.parameters())
    assert 4.2e6 < g_parameters < 4.4e6 and 1.0e6 < d_parameters < 1.1e6
    assert sum(isinstance(m, ConditionalBatchNorm) for m in model.generator.modules()) == 6  # 2 per block
    assert type(model.discriminator).__name__ == "ProjectionDiscriminator"
    assert all(hasattr(m, "parametrizations") for m in model.discriminator.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("preset", ["sngan_resnet_cifar10", "cgan_pd_resnet_cifar10"])
def test_the_resnet_presets_train_on_the_real_cifar10_subset(tmp_path, preset):
    """A few steps of each ResNet preset, as it is, on real CIFAR-10 pixels (the shared subset, as a folder)."""
    subset = SHARED_DATA / "cifar10-subset"
    if not (subset / "train").is_dir():
        pytest.skip(f"the real CIFAR-10 subset is not in {subset} (train/<class>/*.png)")
    overrides = [f"experiment={preset}", "dataset=folder", f"dataset.root={subset / 'train'}",
                 f"dataset.test_root={subset / 'test'}", "train.steps=2", "train.d_steps=2", "train.batch_size=16",
                 *QUICK[3:], "log.num_samples=10", "eval.enabled=false", "dataset.in_memory=false",
                 "dataset.workers=0"]  # fmt: skip
    summary = train(compose_config(overrides), tmp_path / "run")
    assert summary["status"] == "completed" and summary["step"] == 2
    assert (tmp_path / "run" / "samples" / "step_0000002.png").exists()


def test_augmenting_an_mlp_discriminator_warns(data_root, caplog):
    """An MLP has no translation equivariance: augmentation made its samples worse (docs/results.md)."""
    cfg = compose_config(QUICK + TINY["mlp"] + dataset_overrides("mnist", data_root) + ["augment=diffaugment"])
    resolve_image_size(cfg)
    source = build(cfg.dataset, "dataset")
    build_gan(cfg, CPU, source.num_classes, source=source)
    assert "augment=diffaugment is for convolutional discriminators" in caplog.text
