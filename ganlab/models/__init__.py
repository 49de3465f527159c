"""Generator/discriminator pairs. Each architecture is one `GANModel` subclass, built from `conf/model/<name>.yaml`."""

from ganlab.models.base import GANModel

__all__ = ["GANModel"]
