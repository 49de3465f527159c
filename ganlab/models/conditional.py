"""The blocks that take the class label: a `Network` passes `y` to them, and the loop passes `y` to every network.

So conditioning lives inside the models' blocks, as in StudioGAN's cBN generators and mimicry's `cgan_pd`:

- `ConditionalBatchNorm`: the seed document's conditional BatchNorm, a BatchNorm without its own affine whose
  per-class gain and bias come from an embedding of the label (gain N(1, 0.02), bias 0, set by the block itself).
- `LabelEmbedding`: the MLP generator's other option, an embedding of the label concatenated with z.
- `ProjectionDiscriminator` (Miyato & Koyama 2018): logit = psi(phi(x)) + <embed(y), phi(x)>.
- `ClassifierDiscriminator` (AC-GAN, Odena et al. 2017): the usual logit, and a class head whose cross-entropy on
  the asked labels joins both players' losses.

Every discriminator is a `Discriminator`: called as `D(x, y)`, with its output read by `split_outputs(outputs,
labels)` into the adversarial logits and any loss terms the model adds (AC-GAN's class loss). Losses, penalties and
augmentation see only the logits, so each composes with every model. Every conditional D is built from the same
keywords (`D_CONDITIONS`), whichever it uses.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TakesLabel(nn.Module):
    """A block called as `block(x, y)`: `Network` hands it the labels as well as the activations."""


class Network(nn.Sequential):
    """An `nn.Sequential` called as `G(z, y)` or `D(x, y)`: label blocks (`TakesLabel`) get `y`, the others only x.

    A network without label blocks ignores `y`: the unconditional models. A subclass, not a wrapper, so the state
    dict keeps the keys of the plain `nn.Sequential` it replaced.
    """

    def forward(self, input: Tensor, y: Tensor | None = None) -> Tensor:
        for layer in self:
            input = layer(input, y) if isinstance(layer, TakesLabel) else layer(input)
        return input


class Discriminator(nn.Module):
    """What the training step, the losses and the penalties read of a discriminator.

    `D(x, y)` gives its raw outputs for images x with labels y (None if it ignores them); `split_outputs(outputs,
    labels)` gives the adversarial logits, shape (N,), and the loss terms the model adds, named (none by default).
    A term is added to D's loss on real and fake images and to G's on fake ones, with the labels given.
    """

    def split_outputs(self, outputs: Tensor, labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The adversarial logits, and no extra loss terms."""
        return outputs, {}

    @property
    def has_batch_statistics(self) -> bool:
        """True if a layer normalises across the batch, so real and fake must not share one forward pass."""
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())


class SequentialDiscriminator(Network, Discriminator):
    """An unconditional D: its layers in sequence, ignoring y (the state dict keeps `nn.Sequential`'s keys)."""


def _needs(y: Tensor | None, block: str) -> Tensor:
    if y is None:
        raise ValueError(f"{block} is conditional: it must be called with the class labels y, not None.")
    return y


class ConditionalBatchNorm(TakesLabel):
    """BatchNorm whose gain and bias are looked up per class: gain(y) * BN(x) + bias(y) (the seed's recipe).

    One embedding holds [gain | bias] per class; the gains start at N(1, 0.02) and the biases at 0, set here, and
    a model-wide weight initialisation leaves the block alone (it touches only affine norms and convolutions).
    dims: 2 for images (N, C, H, W), 1 for the MLP's features (N, C).
    """

    def __init__(self, num_features: int, num_classes: int, dims: int = 2):
        super().__init__()
        self.num_features = num_features
        self.bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(num_features, affine=False)
        self.embed = nn.Embedding(num_classes, 2 * num_features)
        with torch.no_grad():
            self.embed.weight[:, :num_features].normal_(1.0, 0.02)
            self.embed.weight[:, num_features:].zero_()

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        gain, bias = self.embed(_needs(y, "ConditionalBatchNorm")).chunk(2, dim=1)
        shape = (-1, self.num_features) + (1,) * (x.dim() - 2)
        return gain.view(shape) * self.bn(x) + bias.view(shape)


class LabelEmbedding(TakesLabel):
    """z -> [z, embed(y)]: the label as `dim` learned numbers beside the latent vector."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, dim)

    def forward(self, z: Tensor, y: Tensor | None) -> Tensor:
        return torch.cat([z, self.embed(_needs(y, "LabelEmbedding")).to(z.dtype)], dim=1)


def pooled(features: Tensor) -> Tensor:
    """phi(x) as one vector per image: feature maps summed over their positions (SNGAN), vectors as they are."""
    return features.flatten(2).sum(2) if features.dim() == 4 else features


class ProjectionDiscriminator(Discriminator):
    """logit = head(phi(x)) + <embed(y), pool(phi(x))>, with phi = `features` of `width` channels.

    The embedding starts at N(0, 1/sqrt(width)): at PyTorch's N(0, 1) the projection term swamps the rest, and the
    generator learns to ignore the label (issue 14's probe: 10% class accuracy). Spectral norm, where chosen,
    normalises it too.
    """

    def __init__(self, features: nn.Module, head: nn.Module, num_classes: int, width: int, class_weight: float):
        super().__init__()  # class_weight: AC-GAN's, which a projection has no use for
        self.features, self.head = features, head
        self.embed = nn.Embedding(num_classes, width)
        nn.init.normal_(self.embed.weight, 0.0, width**-0.5)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        phi = self.features(x)
        projection = (self.embed(_needs(y, "the projection discriminator")) * pooled(phi)).sum(1)
        return self.head(phi).reshape(-1) + projection


class ClassifierDiscriminator(Discriminator):
    """AC-GAN: outputs (N, 1 + classes), the adversarial logit, then the class logits of a linear head on phi(x).

    The class head does not see y; `split_outputs` turns its logits into `class_weight` x cross-entropy against
    the labels the images carry (real) or were generated for (fake), a term of D's loss and of G's.
    """

    def __init__(self, features: nn.Module, head: nn.Module, num_classes: int, width: int, class_weight: float):
        super().__init__()
        self.features, self.head = features, head
        self.classifier = nn.Linear(width, num_classes)
        self.class_weight = class_weight

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        phi = self.features(x)
        return torch.cat([self.head(phi).reshape(-1, 1), self.classifier(pooled(phi))], dim=1)

    def split_outputs(self, outputs: Tensor, labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The adversarial logits (column 0), and the weighted class cross-entropy as the term `class`."""
        class_loss = F.cross_entropy(outputs[:, 1:].float(), _needs(labels, "the AC-GAN discriminator"))
        return outputs[:, 0], {"class": self.class_weight * class_loss}


# a conditional D's class, each built as D(features, head, num_classes, width, class_weight)
D_CONDITIONS = {"projection": ProjectionDiscriminator, "acgan": ClassifierDiscriminator}
