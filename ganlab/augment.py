"""Augmentation of what the discriminator sees, differentiable, for training on little data.

`augment=diffaugment` is DiffAugment (Zhao et al. 2020): every image D sees, real or fake, in the D step, the G step
and the penalties, goes through the same random differentiable operations, so D cannot memorise the training set
and G still gets gradients through them. `augment=ada` is ADA (Karras et al. 2020) with DiffAugment's operations:
each operation applies to an image with probability p, and p follows the overfitting heuristic
r_t = E[sign D(x_real)], rising while r_t is above `target` and falling below it.

The operations follow DiffAugment's reference code, on images mapped to [-1, 1]:
- `color`: brightness (+U[-0.5, 0.5]), saturation (x U[0, 2] about the pixel's mean) and contrast (x U[0.5, 1.5]
  about the image's mean);
- `translation`: a shift of up to `translation` x the size in each direction, padding with the middle grey;
- `cutout`: a square of `cutout` x the size, at a random place, set to the middle grey;
- `flip`: a horizontal mirror. It changes what some classes mean (a mirrored 2 or 7 is no digit), so datasets
  declare whether it keeps their classes (`flip_keeps_class`), and it is dropped where it does not.
Draws come from torch's random stream, the same on every process under torchrun.
"""

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from ganlab.errors import ConfigError

log = logging.getLogger("ganlab")


def color(x: Tensor) -> Tensor:
    n = x.shape[0]
    x = x + (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def translation(x: Tensor, ratio: float) -> Tensor:
    n, _, height, width = x.shape
    shift_y, shift_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = torch.randint(-shift_y, shift_y + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-shift_x, shift_x + 1, (n, 1, 1), device=x.device)
    index, rows, columns = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(height, device=x.device), torch.arange(width, device=x.device),
        indexing="ij",
    )  # fmt: skip
    rows = (rows + dy + 1).clamp(0, height + 1)
    columns = (columns + dx + 1).clamp(0, width + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # the border of zeros (grey) a shifted pixel lands on
    return padded.permute(0, 2, 3, 1)[index, rows, columns].permute(0, 3, 1, 2)


def cutout(x: Tensor, ratio: float) -> Tensor:
    n, _, height, width = x.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = torch.randint(0, height + (1 - size_y % 2), (n, 1, 1), device=x.device)
    left = torch.randint(0, width + (1 - size_x % 2), (n, 1, 1), device=x.device)
    index, rows, columns = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(size_y, device=x.device),
        torch.arange(size_x, device=x.device), indexing="ij",
    )  # fmt: skip
    rows = (rows + top - size_y // 2).clamp(0, height - 1)
    columns = (columns + left - size_x // 2).clamp(0, width - 1)
    mask = torch.ones(n, height, width, dtype=x.dtype, device=x.device)
    mask[index, rows, columns] = 0
    return x * mask.unsqueeze(1)


def flip(x: Tensor) -> Tensor:
    return x.flip(3)


OPERATIONS = ("color", "translation", "cutout", "flip")


class Augment:
    """No augmentation (`augment=none`): D sees the images as they are. The base of the others.

    `__call__(images)` gives what D sees; `observe(real_logits, runtime)` takes D's logits on a real batch after each
    D update (ADA's feedback) and returns statistics to log; `state_dict` is what the checkpoint keeps.
    """

    kind = "none"  # the `augment=` option, for messages

    def prepare(self, image_shape: tuple[int, ...], value_range: tuple[float, float], flip_keeps_class: bool,
                is_image: bool) -> None:  # fmt: skip
        """Check the operations against the data, once the model and dataset are known."""

    def __call__(self, images: Tensor) -> Tensor:
        return images

    def observe(self, real_logits: Tensor, runtime) -> dict[str, Tensor]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


class DiffAugment(Augment):
    """DiffAugment: the `policy` operations applied to every image D sees.

    policy: a list of `color`, `translation`, `cutout`, `flip`, applied in that order. translation: the largest
    shift as a share of the size (1/8 in the paper); cutout: the side of the cut square as a share (1/2).
    """

    kind = "diffaugment"

    def __init__(self, policy: list[str], translation: float = 0.125, cutout: float = 0.5):
        policy = list(policy)
        unknown = [name for name in policy if name not in OPERATIONS]
        if unknown:
            raise ConfigError(
                f"augment.policy has the unknown operation {unknown[0]!r}: use some of {list(OPERATIONS)}."
            )
        if not 0 < translation < 1 or not 0 < cutout < 1:
            raise ConfigError(
                f"augment.translation={translation} and augment.cutout={cutout} must be shares of the image "
                f"size in (0, 1)."
            )
        self.policy, self.translation, self.cutout = policy, translation, cutout
        self.low, self.high = -1.0, 1.0

    def prepare(self, image_shape, value_range, flip_keeps_class, is_image):
        if not is_image:
            raise ConfigError(f"augment={self.kind} augments images, and this dataset's samples are points: use "
                              f"augment=none.")  # fmt: skip
        size = min(image_shape[1:])
        for name, ratio in (("translation", self.translation), ("cutout", self.cutout)):
            if name in self.policy and int(size * ratio + 0.5) < 1:
                raise ConfigError(
                    f"augment={self.kind}: {name} of {ratio} of a {size}-pixel image moves no pixel: raise "
                    f"augment.{name} to at least {0.5 / size:.3g}, or drop {name} from augment.policy."
                )
        if "flip" in self.policy and not flip_keeps_class:
            log.warning("augment.policy: flip is dropped, since a mirrored image of this dataset can show another "
                        "class (a mirrored digit)")  # fmt: skip
            self.policy = [name for name in self.policy if name != "flip"]
        self.low, self.high = value_range

    def operations(self) -> list:
        """The policy's operations, each a function of a batch."""
        chosen = {
            "color": color,
            "translation": lambda x: translation(x, self.translation),
            "cutout": lambda x: cutout(x, self.cutout),
            "flip": flip,
        }
        return [chosen[name] for name in self.policy]

    def apply(self, x: Tensor, operation) -> Tensor:
        return operation(x)

    def __call__(self, images):
        if not self.policy:
            return images
        scale = (self.high - self.low) / 2
        x = (images - self.low) / scale - 1  # to [-1, 1], where the reference's constants hold
        for operation in self.operations():
            x = self.apply(x, operation)
        return (x + 1) * scale + self.low


class AdaptiveAugment(DiffAugment):
    """ADA's adaptive probability over DiffAugment's operations: each applies to an image with probability p.

    Every `interval` D updates, r_t = E[sign D(x_real)] over them moves p by `interval` x batch / (kimg x 1000)
    towards more augmentation if r_t > target, less if below (so p can go from 0 to 1 in `kimg` thousand images).
    p starts at `p` and stays in [0, 1]. p, r_t and the partial sums are device tensors (no sync per step).
    """

    kind = "ada"

    def __init__(self, policy: list[str], translation: float = 0.125, cutout: float = 0.5, target: float = 0.6,
                 interval: int = 4, kimg: float = 100.0, p: float = 0.0):  # fmt: skip
        super().__init__(policy, translation, cutout)
        if not 0 < target < 1:
            raise ConfigError(f"augment.target={target} must be in (0, 1): stylegan2-ada uses 0.6.")
        if not isinstance(interval, int) or interval < 1 or kimg <= 0:
            raise ConfigError(f"augment.interval={interval} must be an integer >= 1 and augment.kimg={kimg} > 0.")
        if not 0 <= p <= 1:
            raise ConfigError(f"augment.p={p} must be in [0, 1].")
        self.target, self.interval, self.kimg = target, interval, kimg
        self.p = torch.tensor(float(p))
        self.rt = torch.tensor(0.0)
        self.sums = torch.zeros(2)  # sum of sign D(x_real), and of the images counted, since p last moved
        self.updates = 0  # D updates since p last moved

    def apply(self, x, operation):
        chosen = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p.to(x.device)
        return torch.where(chosen, operation(x), x)

    def observe(self, real_logits, runtime):
        signs = real_logits.detach().float().sign()
        batch = torch.stack([signs.sum(), torch.tensor(float(signs.numel()), device=signs.device)])
        self.sums = self.sums.to(signs.device) + runtime.average(batch) * runtime.world_size
        self.updates += 1
        if self.updates == self.interval:
            signs_sum, images = self.sums
            self.rt = signs_sum / images
            step = images / (self.kimg * 1000)
            self.p = (self.p.to(signs.device) + torch.sign(self.rt - self.target) * step).clamp(0.0, 1.0)
            self.sums, self.updates = torch.zeros_like(self.sums), 0
        return {"Augment/p": self.p, "Augment/rt": self.rt.to(signs.device)}

    def state_dict(self):
        return {"p": self.p.cpu(), "rt": self.rt.cpu(), "sums": self.sums.cpu(), "updates": self.updates}

    def load_state_dict(self, state):
        self.p, self.rt, self.sums, self.updates = state["p"], state["rt"], state["sums"], state["updates"]
