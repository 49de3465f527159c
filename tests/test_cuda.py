"""What only a CUDA GPU can show: bf16 autocast and torch.compile on the GPU, exact resume with CUDA random states,
and SyncBatchNorm in a NCCL process group.

Every test here is marked `cuda` and skips without a GPU: collected everywhere, run where `pytest -m cuda` finds one
(`scripts/gpu_check.py` runs them as one of its checks).
"""

import math

import pytest
import torch
import torch.distributed as dist
from conftest import compose_config, dataset_overrides
from test_checkpoint import RESUMABLE, assert_same_training_state
from torch import nn

from ganlab.config import build
from ganlab.train import train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

CUDA = torch.device("cuda")
# a few steps of a real run, no evaluation; log.every=1 makes each final scalar one step's value, not a mean
QUICK = ["device=cuda", "train.batch_size=16", "log.every=1", "log.sample_every=0", "log.num_samples=4",
         "log.progress=false", "eval.enabled=false"]  # fmt: skip


def is_bfloat16(value: float) -> bool:
    """Whether `value` is exactly a bf16 number (8 significant bits): what a mean computed in bf16 gives."""
    return torch.tensor(value, dtype=torch.float64).bfloat16().double().item() == value


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_the_dcgan_preset_trains_on_cuda_in_bf16_with_finite_losses(tmp_path, data_root, compile):
    overrides = ["experiment=dcgan_mnist", *dataset_overrides("mnist", data_root), *QUICK, "train.steps=4",
                 "device.precision=bf16", f"device.compile={str(compile).lower()}"]  # fmt: skip
    summary = train(compose_config(overrides), tmp_path / "run")
    assert (summary["status"], summary["step"]) == ("completed", 4)
    assert all(math.isfinite(summary["final"][key]) for key in ("Loss/D", "Loss/G")), summary["final"]
    # D's mean logits were computed under autocast: an fp32 run's means are not bf16 numbers (the test can fail)
    assert is_bfloat16(summary["final"]["Output/D_real"]) and is_bfloat16(summary["final"]["Output/D_fake"])


def test_a_cuda_run_resumes_bit_identically(tmp_path, data_root):
    """Stopped at step 3 and continued to 6, a run on the GPU ends where one straight run to 6 ends: the checkpoint
    holds the CUDA random states, and the MLP's kernels are deterministic."""
    common = [*dataset_overrides("mnist", data_root), *QUICK, "model.hidden=16", *RESUMABLE]
    train(compose_config([*common, "train.steps=6"]), tmp_path / "straight")
    train(compose_config([*common, "train.steps=3"]), tmp_path / "split")
    summary = train(compose_config([*common, "train.steps=6"]), tmp_path / "split")
    assert summary["step"] == 6
    assert_same_training_state(tmp_path / "straight", tmp_path / "split")


def test_batch_norm_becomes_sync_batch_norm_on_cuda_and_computes_what_batch_norm_computes(tmp_path):
    """The DCGAN preset prepared as under torchrun on CUDA (`GANModel.prepare(sync_batch_norm=True)`), in a NCCL
    group of one rank: every BatchNorm layer is a SyncBatchNorm, and G's and D's outputs and D's gradients are plain
    BatchNorm's (one rank has no other statistics to add)."""
    cfg = compose_config(["experiment=dcgan_mnist"])

    def prepared(sync: bool):
        torch.manual_seed(0)  # the same initial weights for both
        return build(cfg.model, "model", channels=1, image_size=64).prepare(CUDA, sync_batch_norm=sync)

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        plain, synced = prepared(False), prepared(True)
        batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
        assert batch_norms > 0 and sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == batch_norms
        assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
        z = torch.randn(16, cfg.model.z_dim, device=CUDA)
        outputs = [model.discriminator(model.generator(z, None), None) for model in (plain, synced)]
        for output in outputs:
            output.mean().backward()
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
        pairs = zip(plain.discriminator.named_parameters(), synced.discriminator.parameters(), strict=True)
        for (name, left), right in pairs:
            torch.testing.assert_close(right.grad, left.grad, rtol=1e-4, atol=1e-5, msg=name)
    finally:
        dist.destroy_process_group()
