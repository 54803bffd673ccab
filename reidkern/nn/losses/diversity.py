"""Part diversity losses: DPTI's mean squared cosine between part vectors, CAL's overlap of part
selection maps."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from reidkern.ops import _validate as V

_MODES = ("cosine", "overlap")


class PartDiversityLoss(nn.Module):
    """Penalises parts that look at the same thing.

    * ``mode="cosine"`` (DPTI's modified diversity loss): input part vectors ``parts`` [B, N, D];
      loss = mean over samples and ordered pairs i ≠ j of cos²(f_i, f_j) (0 when N = 1).
    * ``mode="overlap"`` (CAL's L_div): input selection / score matrices Ŝ [B, L, N_p] (L tokens,
      N_p parts); per sample Σ triu(ŜᵀŜ, 1), the sum of the strictly-upper-triangular entries of the
      [N_p, N_p] overlap matrix; averaged (``reduction="mean"``) or summed over samples.

    Args: mode "cosine" (default) or "overlap"; reduction "mean" (default) or "sum" over samples
    (in "cosine" mode "sum" sums the per-sample means).
    """

    def __init__(self, mode="cosine", reduction="mean"):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.mode, self.reduction = mode, reduction

    def extra_repr(self):
        return f"mode={self.mode!r}, reduction={self.reduction!r}"

    def forward(self, x):
        name = "parts" if self.mode == "cosine" else "scores"
        x = V.floating(V.as_tensor(x, name), name)
        V.check_ndim(x, 3, name, "[B, N, D]" if self.mode == "cosine" else "[B, L, N_p]")
        mags = V.finite_magnitudes(((name, x),))  # NaN/inf refused
        if mags and self.mode == "overlap":
            # sum of triu(S^T S): at most L N_p^2 max|S|^2 / 2; beyond the dtype it would be inf
            bound = x.shape[1] * x.shape[2] ** 2 * mags[0] ** 2
            if bound > V.compute_max(x.dtype) / 2 ** 16:
                raise ValueError(f"scores: the overlap sums (up to L * N_p^2 * max|S|^2 = "
                                 f"{bound:.3g}) exceed {x.dtype}'s range; rescale the scores")
        if x.shape[0] == 0:  # empty batch: zero loss (a mean over no sample would be NaN)
            return 0 * x.sum()
        if self.mode == "cosine":
            n = x.shape[1]
            f = V.normalize_rows(x, dim=2)
            gram = f @ f.transpose(1, 2)  # [B, N, N]
            off = ~torch.eye(n, dtype=torch.bool, device=x.device)
            per = (gram.pow(2) * off).sum((1, 2)) / max(n * (n - 1), 1)
        else:
            overlap = x.transpose(1, 2) @ x  # [B, N_p, N_p]
            per = torch.triu(overlap, diagonal=1).sum((1, 2))
        return per.mean() if self.reduction == "mean" else per.sum()
