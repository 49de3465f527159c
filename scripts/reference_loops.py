"""Minimal training loops written the way the classic recipes write them, for `scripts/bench.py` to compare against.

They follow the recipe documents ganlab reproduces (the wiseodd LSGAN and f-GAN MLP scripts, the PyTorch DCGAN
tutorial): a numpy `next_batch` with `torch.from_numpy` every step, or a torchvision DataLoader with PIL transforms
and 2 workers; `.item()` where the tutorial prints; the discriminator loss backpropagated through the generator
where the scripts do not detach. The math (architectures, losses, optimisers, batch sizes) is the recipes' own and
the same as ganlab's presets. Each class builds its state once; `step()` runs one generator iteration.
"""

import numpy as np
import torch
import torchvision
from torch import nn, optim
from torch.utils.data import DataLoader
from torchvision import transforms


class NumpyMNIST:
    """`mnist.train` of the TensorFlow tutorials: float32 images in [0, 1], flat, reshuffled at each epoch."""

    def __init__(self, images_uint8: np.ndarray, seed: int = 0):
        self.images = images_uint8.reshape(len(images_uint8), -1).astype(np.float32) / 255.0
        self.index = 0
        self.rng = np.random.RandomState(seed)

    def next_batch(self, batch_size: int) -> np.ndarray:
        if self.index + batch_size > len(self.images):
            self.images = self.images[self.rng.permutation(len(self.images))]
            self.index = 0
        batch = self.images[self.index : self.index + batch_size]
        self.index += batch_size
        return batch


def _mlp_pair(z_dim: int, h_dim: int, x_dim: int, xavier: bool) -> tuple[nn.Module, nn.Module]:
    G = nn.Sequential(nn.Linear(z_dim, h_dim), nn.ReLU(), nn.Linear(h_dim, x_dim), nn.Sigmoid())
    D = nn.Sequential(nn.Linear(x_dim, h_dim), nn.ReLU(), nn.Linear(h_dim, 1))
    if xavier:
        for layer in [*G, *D]:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0.0, 1.0 / np.sqrt(layer.in_features / 2.0))
                nn.init.zeros_(layer.bias)
    return G, D


class LSGANReference:
    """LSGAN recipe: MLP z=64 h=128, Xavier init, uniform noise, Adam 1e-3, batch 32, 3 D steps per G step."""

    mb_size, z_dim, h_dim, lr, d_steps = 32, 64, 128, 1e-3, 3

    def __init__(self, images_uint8: np.ndarray):
        self.mnist = NumpyMNIST(images_uint8)
        self.G, self.D = _mlp_pair(self.z_dim, self.h_dim, self.mnist.images.shape[1], xavier=True)
        self.G_solver = optim.Adam(self.G.parameters(), lr=self.lr)
        self.D_solver = optim.Adam(self.D.parameters(), lr=self.lr)

    def sample_z(self, m: int, n: int) -> torch.Tensor:
        return torch.from_numpy(np.random.uniform(-1.0, 1.0, size=[m, n]).astype(np.float32))

    def reset_grad(self) -> None:
        self.G.zero_grad()
        self.D.zero_grad()

    def step(self) -> None:
        for _ in range(self.d_steps):
            z = self.sample_z(self.mb_size, self.z_dim)
            X = torch.from_numpy(self.mnist.next_batch(self.mb_size))
            G_sample = self.G(z)
            D_real, D_fake = self.D(X), self.D(G_sample)
            D_loss = 0.5 * (torch.mean((D_real - 1) ** 2) + torch.mean(D_fake**2))
            D_loss.backward()
            self.D_solver.step()
            self.reset_grad()
        z = self.sample_z(self.mb_size, self.z_dim)
        G_sample = self.G(z)
        D_fake = self.D(G_sample)
        G_loss = 0.5 * torch.mean((D_fake - 1) ** 2)
        G_loss.backward()
        self.G_solver.step()
        self.reset_grad()


class FGANReference:
    """f-GAN recipe, reverse KL: MLP z=10 h=128, normal noise, Adam 1e-3, batch 32, one D step per G step."""

    mb_size, z_dim, h_dim, lr = 32, 10, 128, 1e-3

    def __init__(self, images_uint8: np.ndarray):
        self.mnist = NumpyMNIST(images_uint8)
        self.G, self.D = _mlp_pair(self.z_dim, self.h_dim, self.mnist.images.shape[1], xavier=False)
        self.G_solver = optim.Adam(self.G.parameters(), lr=self.lr)
        self.D_solver = optim.Adam(self.D.parameters(), lr=self.lr)

    def reset_grad(self) -> None:
        self.G.zero_grad()
        self.D.zero_grad()

    def step(self) -> None:
        z = torch.randn(self.mb_size, self.z_dim)
        X = torch.from_numpy(self.mnist.next_batch(self.mb_size))
        G_sample = self.G(z)
        D_real, D_fake = self.D(X), self.D(G_sample)
        # the paper's reverse KL: T = -exp(-V), f*(T) = -1 - log(-T)
        D_loss = -(torch.mean(-torch.exp(-D_real)) - torch.mean(-1 + D_fake))
        D_loss.backward()
        self.D_solver.step()
        self.reset_grad()
        G_sample = self.G(z)
        D_fake = self.D(G_sample)
        G_loss = -torch.mean(-1 + D_fake)  # -E_Q[f*(T)]: the recipe's generator minimises the bound
        G_loss.backward()
        self.G_solver.step()
        self.reset_grad()


class DCGANGenerator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 1):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh(),
        )  # fmt: skip

    def forward(self, x):
        return self.main(x)


class DCGANDiscriminator(nn.Module):
    def __init__(self, nc: int = 1, ndf: int = 64):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x):
        return self.main(x).view(-1, 1).squeeze(1)


def weights_init(m: nn.Module) -> None:
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


def tutorial_loader(root: str, batch_size: int = 64, image_size: int = 64, workers: int = 2) -> DataLoader:
    """The DCGAN tutorial's MNIST DataLoader: PIL Resize, CenterCrop, ToTensor, Normalize on every image."""
    transform = transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize((0.5,), (0.5,)),
        ]
    )
    dataset = torchvision.datasets.MNIST(root=root, train=True, transform=transform, download=False)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


class DCGANReference:
    """The PyTorch DCGAN tutorial on 64x64 MNIST: batch 64, BCELoss on a Sigmoid D, Adam 2e-4 betas (0.5, 0.999)."""

    nz, lr, beta1 = 100, 2e-4, 0.5

    def __init__(self, root: str, device: torch.device, batch_size: int = 64):
        self.device = device
        self.dataloader = tutorial_loader(root, batch_size)
        self.batches = iter(self.dataloader)
        self.netG = DCGANGenerator(self.nz).to(device)
        self.netD = DCGANDiscriminator().to(device)
        self.netG.apply(weights_init)
        self.netD.apply(weights_init)
        self.criterion = nn.BCELoss()
        self.optimizerD = optim.Adam(self.netD.parameters(), lr=self.lr, betas=(self.beta1, 0.999))
        self.optimizerG = optim.Adam(self.netG.parameters(), lr=self.lr, betas=(self.beta1, 0.999))

    def next_data(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.dataloader)
            return next(self.batches)

    def step(self) -> None:
        data = self.next_data()
        self.netD.zero_grad()
        real_cpu = data[0].to(self.device)
        b_size = real_cpu.size(0)
        label = torch.full((b_size,), 1.0, dtype=torch.float, device=self.device)
        output = self.netD(real_cpu)
        errD_real = self.criterion(output, label)
        errD_real.backward()
        self.D_x = output.mean().item()
        noise = torch.randn(b_size, self.nz, 1, 1, device=self.device)
        fake = self.netG(noise)
        label.fill_(0.0)
        output = self.netD(fake.detach())
        errD_fake = self.criterion(output, label)
        errD_fake.backward()
        self.D_G_z1 = output.mean().item()
        self.errD = errD_real + errD_fake
        self.optimizerD.step()
        self.netG.zero_grad()
        label.fill_(1.0)
        output = self.netD(fake)
        errG = self.criterion(output, label)
        errG.backward()
        self.D_G_z2 = output.mean().item()
        self.optimizerG.step()
