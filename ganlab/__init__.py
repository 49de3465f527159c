"""ganlab: a Hydra-configured GAN experiment runner. The entry point is `ganlab-train` (ganlab.entry.train)."""
