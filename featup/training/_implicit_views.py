"""The fast engine's pooling: every view's jitter, fit, blur, padding and windows as separable matrices, and all
views pooled as one sparse matrix product with the rendered map (``featup.training.implicit`` says why)."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from featup.jitter import Jitter, _axis_coords


class _SparsePool(torch.autograd.Function):
    """out[n] = Σ_s weight[n, s] · values[index[n, s]] with gradients for values and weights (CSR products).

    ``transposed`` holds, per block of ``windows`` rows (one view), the view's pattern sorted by source pixel
    (``_ViewOperators.transposed``), so the backward product never sorts; ``pixels`` is one image's H·W.
    """

    @staticmethod
    def forward(ctx, values: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, transposed: list,
                pixels: int) -> torch.Tensor:
        n, s = index.shape
        crow = torch.arange(0, n * s + 1, s, device=index.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            matrix = torch.sparse_csr_tensor(crow, index.flatten(), weight.detach().flatten(), (n, values.shape[0]),
                                             check_invariants=False)
        ctx.save_for_backward(values, weight, crow, index)
        ctx.transposed, ctx.pixels = transposed, pixels
        return matrix @ values

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        values, weight, crow, index = ctx.saved_tensors
        n, s = index.shape
        grad_values = grad_weight = None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            if ctx.needs_input_grad[0]:
                grad_values = torch.zeros_like(values)
                views = len(ctx.transposed)
                per_view = n // views
                flat = weight.detach().reshape(views, -1)
                for v, (perm, crow_t, col_t) in enumerate(ctx.transposed):
                    image = int(index[v * per_view, 0]) // ctx.pixels
                    matrix = torch.sparse_csr_tensor(crow_t, col_t, flat[v][perm], (ctx.pixels, per_view),
                                                     check_invariants=False)
                    rows = slice(image * ctx.pixels, (image + 1) * ctx.pixels)
                    grad_values[rows] += matrix @ grad[v * per_view:(v + 1) * per_view]
            if ctx.needs_input_grad[1]:
                pattern = torch.sparse_csr_tensor(crow, index.flatten(), values.new_zeros(n * s),
                                                  (n, values.shape[0]), check_invariants=False)
                grad_weight = torch.sparse.sampled_addmm(pattern, grad.contiguous(), values.t(),
                                                         beta=0).values().view(n, s)
        return grad_values, grad_weight, None, None, None


class _ViewOperators:
    """Per view, the separable linear map from a rendered map to its jittered, fitted, blurred, padded windows.

    For window row oy the rows it reads are ``rows[v, oy] @ source[row_start[v, oy] : + Sy]`` (k × Sy);
    columns likewise. Built once per fit in float64 from the jitter's closed-form coordinates.
    """

    def __init__(self, jitters: list[Jitter], size: tuple[int, int], grid: tuple[int, int], k: int, s: int,
                 pad: int):
        h, w = size
        self.k, self.s = k, s
        self.width, self.pixels = w, h * w
        self._transposed: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.row_ops = torch.stack([_axis_operator(h, grid[0], j.pad, j.zoom, j.top, False, k, s, pad) for j in jitters])
        self.col_ops = torch.stack([_axis_operator(w, grid[1], j.pad, j.zoom, j.left, j.flip, k, s, pad)
                                    for j in jitters])
        self.grid = grid
        self.support = (_support(self.row_ops, grid[0], k, s), _support(self.col_ops, grid[1], k, s))

    def widen(self, support: tuple[int, int]) -> None:
        """Cut every window's k×Sy (k×Sx) block out of the full operators, for one Sy×Sx shared by the batch."""
        self.rows, self.row_start = _blocks(self.row_ops, self.grid[0], self.k, self.s, support[0])
        self.cols, self.col_start = _blocks(self.col_ops, self.grid[1], self.k, self.s, support[1])
        del self.row_ops, self.col_ops

    def select(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.rows[idx], self.row_start[idx], self.cols[idx], self.col_start[idx]

    def index(self, idx: torch.Tensor) -> torch.Tensor:
        """Source pixel (y·W + x) of every weight: V×gh×gw×Sy×Sx for the views ``idx``."""
        sy, sx = self.rows.shape[-1], self.cols.shape[-1]
        ys = self.row_start[idx][:, :, None] + torch.arange(sy)  # V×gh×Sy
        xs = self.col_start[idx][:, :, None] + torch.arange(sx)  # V×gw×Sx
        return ys[:, :, None, :, None] * self.width + xs[:, None, :, None, :]

    def transposed(self, view: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """View ``view``'s pattern sorted by source pixel: (order of the weights, CSR row pointers, window ids)."""
        if view not in self._transposed:
            flat = self.index(torch.tensor([view])).flatten()
            order = torch.argsort(flat, stable=True)
            windows = (order // (flat.numel() // (self.grid[0] * self.grid[1])))
            counts = torch.bincount(flat, minlength=self.pixels)
            crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
            self._transposed[view] = (order, crow, windows)
        return self._transposed[view]


def _axis_operator(size: int, cells: int, pad: int, zoom: float, offset: int, flip: bool, k: int, s: int,
                   window_pad: int) -> torch.Tensor:
    """L×size matrix of one axis: jitter (bilinear), fit to the windows' span, blur, reflect padding."""
    coords = _axis_coords(size, pad, zoom, offset, flip)
    low = coords.floor().clamp(0, size - 1)
    frac = coords - low
    high = (low + 1).clamp(max=size - 1)
    op = torch.zeros(size, size, dtype=torch.float64)
    op.scatter_add_(1, low.long()[:, None], (1 - frac)[:, None])
    op.scatter_add_(1, high.long()[:, None], frac[:, None])
    span = s * (cells - 1) + k - 2 * window_pad
    if span != size:
        eye = torch.eye(size, dtype=torch.float64)[None, None]
        op = F.interpolate(eye, size=(span, size), mode="bilinear", align_corners=False)[0, 0] @ op
    m = math.ceil(k / s)
    extra = (cells + m - 1) * s - span - 2 * window_pad

    def along(fn, matrix: torch.Tensor) -> torch.Tensor:
        # Apply a 1-D operation to every column of the matrix.
        return fn(matrix.T[:, None])[:, 0].T

    taps = torch.arange(5, dtype=torch.float64) - 2
    kernel = torch.exp(-taps.square() / 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    if window_pad:
        op = along(lambda x: F.conv1d(F.pad(x, [2, 2], mode="reflect"), kernel), op)
        op = along(lambda x: F.pad(x, [window_pad, window_pad + extra], mode="reflect"), op)
    else:
        op = along(lambda x: F.conv1d(F.pad(x, [2, 2 + extra], mode="reflect"), kernel), op)
    return op


def _support(ops: torch.Tensor, cells: int, k: int, s: int) -> int:
    """The widest range of source indices any window of any view reads."""
    widest = 1
    for c in range(cells):
        used = (ops[:, s * c:s * c + k].abs() > 0).any(1)  # V×size
        first = used.float().argmax(1)
        last = used.shape[1] - 1 - used.flip(1).float().argmax(1)
        widest = max(widest, int((last - first).max()) + 1)
    return widest


def _blocks(ops: torch.Tensor, cells: int, k: int, s: int, support: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view and window, its k×support block of the operator and the block's first source index."""
    size = ops.shape[-1]
    blocks, starts = [], []
    for c in range(cells):
        band = ops[:, s * c:s * c + k]  # V×k×size
        used = (band.abs() > 0).any(1)
        first = used.float().argmax(1).clamp(max=size - support)
        columns = first[:, None] + torch.arange(support)
        blocks.append(torch.gather(band, 2, columns[:, None].expand(-1, k, -1)))
        starts.append(first)
    return torch.stack(blocks, 1).float(), torch.stack(starts, 1)
