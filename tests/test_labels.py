"""Labels travel with the data and into every call of G and D, and an unconditional model is untouched by them.

The fixtures write known labels (conftest.py): MNIST and Fashion-MNIST image i has label i % 10, CIFAR-10 image j
of each batch file j % 10, a folder image the index of its class subfolder; a toy point's label is its mode. Each
served image is found among the images the plain torchvision transform gives, by its pixels, so the label it came
with is checked against the label written for that image, on the in-memory and the streaming path.
"""

import pytest
import torch
from conftest import (
    CIFAR_BATCH_IMAGES,
    FOLDER_SIZES,
    IMAGE_KINDS,
    TOY_KINDS,
    TRAIN_COUNTS,
    compose_config,
    critic_step,
    dataset_overrides,
)

from ganlab.batches import InMemoryBatches, StreamingBatches
from ganlab.checkpoint import CHECKPOINT, read_checkpoint, restore
from ganlab.config import build, resolve_image_size
from ganlab.data import make_batches, reference_transform
from ganlab.models.conditional import Discriminator
from ganlab.regularizers import GradientPenalty
from ganlab.step import build_gan, train_step
from ganlab.train import train

CPU = torch.device("cpu")
TINY = {"mlp": ["model=mlp", "model.hidden=16"], "dcgan": ["model=dcgan", "model.g_width=4", "model.d_width=4"]}
# the runs whose results were recorded before labels existed (BEFORE_LABELS)
QUICK = ["train.steps=3", "train.batch_size=4", "log.every=1", "log.sample_every=1", "log.num_samples=4",
         "train.checkpoint_every=0", "log.progress=false", "eval.num_samples=16", "device=cpu",
         "device.threads=1"]  # fmt: skip


def written_label(kind: str, index: int) -> int:
    """The label the fixture wrote for train image `index` of `kind`."""
    if kind in ("mnist", "fashion_mnist"):
        return index % 10
    if kind == "cifar10":
        return index % CIFAR_BATCH_IMAGES % 10  # 5 batch files, each labelled 0, 1, ..., 9, 0, ...
    if kind == "folder":
        return index // len(FOLDER_SIZES)  # ImageFolder lists the subfolders sorted: a, then b
    raise KeyError(f"no known labels for dataset={kind}: add them to written_label")


def source_of(kind: str, data_root, *extra: str):
    return build(compose_config(dataset_overrides(kind, data_root) + list(extra)).dataset, "dataset")


def image_index(source) -> dict[bytes, int]:
    """Each train image's index, by the pixels the plain torchvision transform gives it (in [0, 1])."""
    dataset = source.checked_open(reference_transform(source, (0.0, 1.0)))
    return {dataset[i][0].numpy().tobytes(): i for i in range(len(dataset))}


def assert_labels_fit(kind: str, index: dict[bytes, int], images: torch.Tensor, labels: torch.Tensor) -> None:
    assert labels.dtype == torch.long and labels.shape == (len(images),)
    for image, label in zip(images, labels, strict=True):
        assert int(label) == written_label(kind, index[image.numpy().tobytes()])


# --- data: every batch is (images, labels) ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_in_memory_batches_carry_the_label_of_each_image(kind, data_root):
    source = source_of(kind, data_root, "dataset.in_memory=true")
    batches = make_batches(source, CPU, (0.0, 1.0), 8)
    assert isinstance(batches, InMemoryBatches)
    index = image_index(source)
    images, labels = batches.next(4 * TRAIN_COUNTS[kind])
    assert_labels_fit(kind, index, images, labels)
    assert set(labels.tolist()) == {written_label(kind, i) for i in range(TRAIN_COUNTS[kind])}


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_streaming_batches_carry_the_label_of_each_image(kind, data_root):
    source = source_of(kind, data_root, "dataset.in_memory=false", "dataset.workers=0")
    loader_batch = TRAIN_COUNTS[kind] // 4
    batches = make_batches(source, CPU, (0.0, 1.0), loader_batch)
    assert isinstance(batches, StreamingBatches)
    index = image_index(source)
    # sizes that split loader batches, leave parts over and cross the end of an epoch
    for size in (5, loader_batch + 3, 2 * loader_batch, TRAIN_COUNTS[kind]):
        images, labels = batches.next(size)
        assert len(images) == size
        assert_labels_fit(kind, index, images, labels)


def test_the_streaming_labels_resume_with_their_images(data_root):
    source = source_of("mnist", data_root, "dataset.in_memory=false", "dataset.workers=0")
    first = make_batches(source, CPU, (0.0, 1.0), 16, seed=3)
    first.next(5)
    first.next(40)  # mid-epoch, part of a loader batch left over
    state = first.state_dict()
    expected = [first.next(16) for _ in range(4)]
    second = make_batches(source, CPU, (0.0, 1.0), 16, seed=3)
    second.load_state_dict(state)
    for images, labels in expected:
        again_images, again_labels = second.next(16)
        assert torch.equal(again_images, images) and torch.equal(again_labels, labels)


def test_in_memory_draws_one_index_for_images_and_labels(data_root):
    """The fast path draws exactly what it drew before labels existed: one randint per batch, nothing else."""
    source = source_of("mnist", data_root, "dataset.in_memory=true")
    batches = make_batches(source, CPU, (-1.0, 1.0), 8)
    torch.manual_seed(0)
    images, labels = batches.next(8)
    after = torch.get_rng_state()
    torch.manual_seed(0)
    index = torch.randint(len(batches), (8,))
    assert torch.equal(torch.get_rng_state(), after)
    assert torch.equal(images, batches.scale(batches.images[index]))
    assert labels.tolist() == [written_label("mnist", int(i)) for i in index]


def test_a_source_without_labels_serves_none(data_root):
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    assert InMemoryBatches(images, CPU, (0.0, 1.0)).next(3)[1] is None
    source = source_of("mnist", data_root, "dataset.in_memory=false", "dataset.workers=0")
    dataset = source.checked_open(reference_transform(source, (0.0, 1.0)))
    stream = StreamingBatches(dataset, CPU, 16, workers=0, seed=0, labelled=False)
    streamed, labels = stream.next(16)
    assert streamed.shape == (16, 1, 28, 28) and labels is None


@pytest.mark.parametrize("kind", TOY_KINDS)
def test_toy_points_carry_their_mode_and_the_same_draws_as_before(kind):
    source = build(compose_config([f"dataset={kind}"]).dataset, "dataset")
    torch.manual_seed(0)
    points, labels = source.batches(CPU, (-1.0, 1.0), 512).next(512)
    torch.manual_seed(0)
    assert torch.equal(points, source.to_range(source.sample(512), (-1.0, 1.0)))  # what the batches were before
    nearest = torch.cdist(source.from_range(points, (-1.0, 1.0)), source.centers).argmin(dim=1)
    assert labels.dtype == torch.long and torch.equal(labels, nearest)
    assert set(labels.tolist()) == set(range(len(source.centers)))


# --- models: G(z, y) and D(x, y) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(TINY))
def test_an_unconditional_model_ignores_y(model):
    cfg = compose_config(TINY[model] + ["dataset.image_size=32", "device=cpu"])
    gan = build_gan(cfg, CPU)
    gan.model.eval()
    torch.manual_seed(0)
    z, y = gan.model.sample_latent(6, CPU)
    assert y is None and gan.model.num_classes == 0
    with torch.no_grad():
        images = gan.model.generator(z)
        for labels in (None, torch.zeros(6, dtype=torch.long), torch.arange(6)):
            assert torch.equal(gan.model.generator(z, labels), images)
            assert torch.equal(gan.model.discriminator(images, labels), gan.model.discriminator(images))
            assert torch.equal(gan.model.discriminator(images, y=labels), gan.model.discriminator(images))


def test_the_unconditional_latent_sampler_draws_only_z():
    model = build(compose_config(TINY["mlp"]).model, "model", channels=1, image_size=28)
    torch.manual_seed(0)
    z, y = model.sample_latent(5, CPU, labels=torch.arange(5))
    after = torch.get_rng_state()
    torch.manual_seed(0)
    assert torch.equal(z, model.sample_noise(5, CPU)) and y is None
    assert torch.equal(torch.get_rng_state(), after)


def test_a_model_with_classes_gets_labels_from_the_sampler():
    """What a conditional model sets (`num_classes`) is all the sampler reads: labels drawn, or the ones asked for."""
    model = build(compose_config(TINY["mlp"]).model, "model", channels=1, image_size=28)
    model.num_classes = 3
    z, y = model.sample_latent(300, CPU)
    assert z.shape == (300, model.z_dim) and y.dtype == torch.long and set(y.tolist()) == {0, 1, 2}
    assert model.sample_latent(4, CPU, labels=torch.tensor([2, 2, 1, 0]))[1].tolist() == [2, 2, 1, 0]


def recorded(network: torch.nn.Module) -> list:
    """The (input, labels) of each call of `network` from now on, as a list that fills."""
    calls = []
    network.register_forward_hook(lambda module, args, output: calls.append((args[0].detach().clone(), args[1])))
    return calls


class RecordedPenalty(GradientPenalty):
    def penalty(self, step):
        self.labels = step.real_labels
        return super().penalty(step)


def test_the_step_passes_real_and_fake_labels_to_g_d_and_the_penalty(data_root):
    """A model with classes (here an unconditional MLP told it has 10) gets the data's labels for the real images
    and the sampler's for the fakes, in the joint D forward and in G's update; the penalty gets the real labels."""
    cfg = compose_config(TINY["mlp"] + dataset_overrides("mnist", data_root) + ["device=cpu"])
    resolve_image_size(cfg)
    gan = build_gan(cfg, CPU)
    assert gan.joint
    gan.model.num_classes = 10
    generator_calls, discriminator_calls = recorded(gan.generator), recorded(gan.discriminator)
    penalty = gan.regularizers[0] = RecordedPenalty()
    source = build(cfg.dataset, "dataset")
    batches = make_batches(source, CPU, gan.model.output_range, 8)
    train_step(gan, batches, 8, d_steps=1)
    ((_, fake_labels),) = generator_calls
    (joint_images, joint_labels), (_, g_step_labels) = discriminator_calls  # the penalty's forward is not a call
    real_images, real_labels = joint_images[:8], joint_labels[:8]
    assert fake_labels.shape == (8,) and torch.equal(joint_labels[8:], fake_labels)
    assert torch.equal(g_step_labels, fake_labels)
    assert torch.equal(penalty.labels, real_labels)
    assert_labels_fit("mnist", image_index(source), real_images, real_labels)


class ClassWeights(Discriminator):
    """A conditional critic D(x, y) = <w_y, x>: its gradient in x is w_y, whose norm the penalty sees."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 4))

    def forward(self, x, y):
        return (self.weight[y] * x.flatten(1)).sum(dim=1)


def test_the_gradient_penalty_takes_the_gradient_with_the_labels_held_fixed():
    torch.manual_seed(0)
    critic, real, fake = ClassWeights(), torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 2, 1])
    penalty = GradientPenalty(weight=10.0).penalty(critic_step(critic, real, fake, y, y))["gradient_penalty"]
    expected = 10.0 * (critic.weight[y].norm(dim=1) - 1).pow(2).mean()
    torch.testing.assert_close(penalty, expected)
    penalty.backward()  # differentiable in D's weights, as the training step needs
    assert critic.weight.grad is not None


# --- nothing changes for the existing models ----------------------------------------------------------------------

# Recorded with the code before labels existed (torch 2.x, CPU, one thread): the final scalars of 3-step runs on the
# fixture data. The label refactor changed none of them on the machine that recorded them. Another CPU's float32
# kernels (AVX2 against AVX-512) differ in the last bits, about 1e-6 relative after 3 steps, so the check allows 1e-4:
# a changed random stream or a changed step moves these numbers by far more.
MATCH = {"rel": 1e-4, "abs": 1e-6}
BEFORE_LABELS = {
    "mlp_mnist_memory": (
        ["model=mlp", "model.hidden=16", "train.ema_decay=0.9"],
        "mnist",
        {
            "Loss/D": 1.3890172243118286,
            "Loss/G": 0.6817284226417542,
            "Output/D_real": 0.037874214351177216,
            "Output/D_fake": 0.04202757775783539,
            "Metrics/fid": 567.977294921875,
            "Metrics/fid_ema": 567.977294921875,
            "param_sum": 17.678465824934392,
        },
    ),
    "mlp_mnist_stream": (
        ["model=mlp", "model.hidden=16", "dataset.in_memory=false", "dataset.workers=0"],
        "mnist",
        {
            "Loss/D": 1.3864445686340332,
            "Loss/G": 0.6785598397254944,
            "Output/D_real": 0.04938427731394768,
            "Output/D_fake": 0.046296071261167526,
            "Metrics/fid": 568.0362548828125,
            "param_sum": 18.00261246527043,
        },
    ),
    "dcgan_gp_joint": (
        [
            "model=dcgan",
            "model.g_width=4",
            "model.d_width=4",
            "model.z_dim=8",
            "model.d_norm=instance",
            "loss=wgan-gp",
            "regularizer=gradient-penalty",
            "train.d_steps=2",
        ],
        "mnist",
        {
            "Loss/D": -0.18720020353794098,
            "Loss/G": 0.027038346976041794,
            "Output/D_real": 0.15899959206581116,
            "Output/D_fake": -0.02820061519742012,
            "Regularizer/gradient_penalty": 0.47078701853752136,
            "Metrics/fid": 135.4681854248047,
            "param_sum": 65.61504936353413,
        },
    ),
    "dcgan_batchnorm": (
        ["model=dcgan", "model.g_width=4", "model.d_width=4", "model.z_dim=8", "train.ema_decay=0.9"],
        "mnist",
        {
            "Loss/D": 1.278746247291565,
            "Loss/G": 0.7733778357505798,
            "Output/D_real": 0.12608450651168823,
            "Output/D_fake": -0.108943410217762,
            "Metrics/fid": 135.5493927001953,
            "Metrics/fid_ema": 135.5493927001953,
            "param_sum": 80.55571678060369,
        },
    ),
    "mlp_ring8": (
        ["model=mlp", "model.hidden=16", "model.noise=uniform"],
        "ring8",
        {
            "Loss/D": 1.3880841732025146,
            "Loss/G": 0.6695524454116821,
            "Output/D_real": 0.04629899188876152,
            "Output/D_fake": 0.04815010726451874,
            "Metrics/high_quality": 0.0,
            "param_sum": -5.320194660089328,
        },
    ),
    "mlp_folder": (
        ["model=mlp", "model.hidden=16", "dataset.image_size=8"],
        "folder",
        {
            "Loss/D": 1.379256010055542,
            "Loss/G": 0.689361035823822,
            "Output/D_real": 0.022602438926696777,
            "Output/D_fake": 0.008052736520767212,
            "param_sum": -8.549477086526167,
        },
    ),
}


@pytest.mark.parametrize("case", sorted(BEFORE_LABELS))
def test_results_are_those_before_labels(tmp_path, data_root, case):
    overrides, kind, before = BEFORE_LABELS[case]
    summary = train(compose_config(QUICK + dataset_overrides(kind, data_root) + overrides), tmp_path / case)
    weights = read_checkpoint(tmp_path / case / CHECKPOINT)["model"].values()
    after = summary["final"] | {"param_sum": float(sum(v.double().sum() for v in weights if v.is_floating_point()))}
    assert {name: after[name] for name in before} == pytest.approx(before, **MATCH)


def test_the_checkpoint_keeps_the_fixed_labels_and_older_ones_still_restore(tmp_path, data_root):
    cfg = compose_config(QUICK + TINY["mlp"] + dataset_overrides("mnist", data_root))
    train(cfg, tmp_path / "run")
    state = read_checkpoint(tmp_path / "run" / CHECKPOINT)  # weights_only=True
    assert "fixed_labels" in state and state["fixed_labels"] is None  # an unconditional run's fixed noise has none
    del state["fixed_labels"]  # as written before labels existed
    gan = build_gan(cfg, CPU)
    batches = make_batches(build(cfg.dataset, "dataset"), CPU, gan.model.output_range, 4)
    step, _, noise, labels = restore(state, gan, tmp_path / "run", batches)
    assert step == 3 and noise.shape == (4, gan.model.z_dim) and labels is None
