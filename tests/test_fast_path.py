"""The fast training path gives the same results as the plain one: joint D forward, bf16 autocast, torch.compile."""

import copy

import pytest
import torch
from conftest import compose_config, dataset_overrides

from ganlab.step import build_gan, discriminator_step, generator_step
from ganlab.train import train

QUICK = [
    "train.batch_size=8",
    "log.every=1",
    "log.sample_every=0",
    "log.num_samples=4",
    "train.checkpoint_every=0",
    "log.progress=false",
    "eval.num_samples=16",
    "device=cpu",
    "device.threads=1",
]


def parameters(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def test_joint_discriminator_forward_equals_separate_forwards():
    cfg = compose_config(["model=dcgan", "model.d_norm=layer", "dataset.image_size=32", "model.g_width=4",
                          "model.d_width=4", "loss=hinge", "device=cpu"])  # fmt: skip
    torch.manual_seed(0)
    joint = build_gan(cfg, torch.device("cpu"))
    assert joint.joint, "a D without batch statistics takes real and fake in one forward"
    separate = copy.deepcopy(joint)
    separate.joint = False
    real, z = torch.rand(6, 1, 32, 32) * 2 - 1, torch.randn(6, joint.model.z_dim)
    gradients = {}
    for gan in (joint, separate):
        fake, stats = discriminator_step(gan, real, None, z, None, keep_graph=True)
        d_grads = [p.grad.clone() for p in gan.model.discriminator.parameters()]
        stats |= generator_step(gan, fake, None, real, None)
        g_grads = [p.grad.clone() for p in gan.model.generator.parameters()]
        gradients[gan.joint] = (stats, d_grads, g_grads)
    (joint_stats, *joint_grads), (separate_stats, *separate_grads) = gradients[True], gradients[False]
    for name in joint_stats:
        torch.testing.assert_close(joint_stats[name], separate_stats[name], rtol=1e-5, atol=1e-6)
    # gradients, not post-Adam weights: Adam's first step turns float noise in near-zero gradients into +-lr
    for joint_list, separate_list in zip(joint_grads, separate_grads, strict=True):
        for a, b in zip(joint_list, separate_list, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_batchnorm_discriminator_keeps_real_and_fake_apart():
    cfg = compose_config(["model=dcgan", "dataset.image_size=32", "device=cpu"])
    assert not build_gan(cfg, torch.device("cpu")).joint


@pytest.mark.parametrize("model", ["mlp", "dcgan"])
def test_bf16_autocast_matches_fp32_within_tolerance(tmp_path, data_root, model):
    small = ["model.hidden=32"] if model == "mlp" else ["model.g_width=8", "model.d_width=8", "dataset.image_size=32"]
    common = QUICK + dataset_overrides("mnist", data_root) + [f"model={model}", "train.steps=1"] + small
    fp32 = train(compose_config(common), tmp_path / "fp32")["final"]
    bf16 = train(compose_config(common + ["device.precision=bf16"]), tmp_path / "bf16")["final"]
    for name in ("Loss/D", "Loss/G"):
        difference = abs(bf16[name] - fp32[name]) / abs(fp32[name])
        assert 0 < difference < 0.03, f"{name}: fp32 {fp32[name]}, bf16 {bf16[name]}"


def test_compiled_step_matches_the_plain_step(tmp_path, data_root):
    common = QUICK + dataset_overrides("mnist", data_root) + ["model.hidden=32", "loss=lsgan", "train.steps=3"]
    train(compose_config(common), tmp_path / "plain")
    train(compose_config(common + ["device.compile=true"]), tmp_path / "compiled")
    plain, compiled = parameters(tmp_path / "plain"), parameters(tmp_path / "compiled")
    assert plain.keys() == compiled.keys()  # compiling must not rename the state dict
    for name in plain:
        torch.testing.assert_close(compiled[name], plain[name], rtol=1e-4, atol=1e-5, msg=name)
