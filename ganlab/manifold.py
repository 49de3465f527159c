"""Precision, recall, density and coverage: fidelity and diversity apart, from k-nearest-neighbour manifolds.

FID folds two failures into one number; these four keep them apart (Kynkäänniemi et al. 2019, "Improved
Precision and Recall Metric for Assessing Generative Models"; Naeem et al. 2020, "Reliable Fidelity and Diversity
Metrics for Generative Models"). Each set of embeddings stands for a manifold: the union of balls around its points,
each ball reaching to the point's k-th nearest neighbour in its own set.

- `precision`: the share of generated points inside the real manifold (fidelity: do samples look real?).
- `recall`: the share of real points inside the generated manifold (diversity: is all of the data drawn?).
- `density`: how many real balls hold each generated point, divided by k, averaged; about 1 for real data, above 1
  where samples crowd the dense middle of the data, and unlike precision not fooled by one stray real outlier.
- `prdc_coverage`: the share of real balls that hold at least one generated point (Naeem's "coverage", renamed so
  it does not clash with ganlab's class `coverage`).

The definitions and the strict `<` comparisons are those of the authors' reference implementation, the `prdc`
package (tests/test_calibration.py checks that both give the same numbers). ganlab does not call it because the
reference side never changes during a run: `ManifoldMetrics` computes the real k-NN radii once, when it is built,
and every later `compute` measures only the generated side. It also runs in torch on the training device, in
chunks so that 10,000 x 10,000 distances never sit in memory at once, and keeps scikit-learn out of the runtime
dependencies (prdc recomputes the real radii on every call, on the CPU, with full distance matrices).
"""

import torch
from torch import Tensor

NEAREST_K = 3  # the k of the k-NN balls; Naeem et al. recommend 5, Kynkäänniemi et al. use 3 as here
CHUNK_ROWS = 1024  # rows of a distance block: 1024 x 10,000 float32 distances are 40 MB


def kth_neighbour_radii(features: Tensor, k: int, chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """The distance (N,) of each row of `features` (N, D) to its k-th nearest other row, block by block.

    A point's distance to itself (0) is the smallest in its row, so the k-th neighbour is the (k+1)-th smallest, as in
    prdc. k is clamped to N - 1, so a set of N <= k points still has radii (those of its farthest point).
    """
    k = min(k, len(features) - 1)
    blocks = (torch.cdist(rows, features) for rows in features.split(chunk_rows))
    return torch.cat([distances.topk(k + 1, dim=1, largest=False).values[:, -1] for distances in blocks])


class ManifoldMetrics:
    """Precision, recall, density and coverage of generated embeddings against one fixed set of real ones.

    reference: the real embeddings (N, D), N >= 2; their k-NN radii are computed here, once. k: the neighbour whose
    distance is a point's radius (clamped to N - 1 for tiny sets). chunk_rows: rows of each distance block.
    """

    def __init__(self, reference: Tensor, k: int = NEAREST_K, chunk_rows: int = CHUNK_ROWS):
        if reference.dim() != 2 or len(reference) < 2:
            raise ValueError(f"reference embeddings must be (N, D) with N >= 2, got {tuple(reference.shape)}.")
        self.reference = reference
        self.k = k
        self.chunk_rows = chunk_rows
        self.reference_radii = kth_neighbour_radii(reference, k, chunk_rows)

    @torch.no_grad()
    def compute(self, generated: Tensor) -> dict[str, float]:
        """precision, recall, density and prdc_coverage of `generated` (M, D), M >= 2; see the module docstring."""
        if generated.dim() != 2 or len(generated) < 2 or generated.shape[1] != self.reference.shape[1]:
            width = self.reference.shape[1]
            raise ValueError(f"generated embeddings must be (M, {width}) with M >= 2, got {tuple(generated.shape)}.")
        generated = generated.to(self.reference.device, self.reference.dtype)
        generated_radii = kth_neighbour_radii(generated, self.k, self.chunk_rows)
        device = self.reference.device
        inside_real = torch.zeros((), dtype=torch.long, device=device)  # generated points inside a real ball
        balls_holding = torch.zeros((), dtype=torch.long, device=device)  # (generated point, real ball) pairs
        reached = torch.zeros(len(self.reference), dtype=torch.bool, device=device)  # recall
        nearest = torch.full_like(self.reference_radii, torch.inf)  # each real point's nearest generated point
        for rows, radii in zip(generated.split(self.chunk_rows), generated_radii.split(self.chunk_rows), strict=True):
            distances = torch.cdist(rows, self.reference)  # (chunk, N)
            in_real_ball = distances < self.reference_radii  # [j, i]: generated j inside real i's ball
            inside_real += in_real_ball.any(dim=1).sum()
            balls_holding += in_real_ball.sum()
            reached |= (distances < radii.unsqueeze(1)).any(dim=0)
            nearest = torch.minimum(nearest, distances.min(dim=0).values)
        k = min(self.k, len(self.reference) - 1)  # the k the reference radii were computed with
        return {
            "precision": int(inside_real) / len(generated),
            "recall": int(reached.sum()) / len(self.reference),
            "density": int(balls_holding) / (k * len(generated)),
            "prdc_coverage": int((nearest < self.reference_radii).sum()) / len(self.reference),
        }
