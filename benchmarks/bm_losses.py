"""Benchmark the mesh-loss implementations (Laplacian + edge + normal) and chamfer.

Implementations of the regularisers compared, all vectorised:
  padded     the original Pixel2Mesh layout: a [V,10] neighbour table padded with -1
             (8 neighbour slots), gathered with index_select; per-graph means by reshape
  edgeindex  this project's default in training: p2m_geo.losses with the Laplacian on the
             cached, column-sorted PyG EdgeIndex the model attaches (CSR product), edge and
             normal terms by torch_geometric.utils.scatter
  pyg        p2m_geo.losses on a plain edge_index (torch_geometric.utils.scatter, the library's)
  index_add  the same functions with their scatter swapped for index_add_ + bincount
  torch_scatter   the same functions with torch_scatter.scatter swapped in (if installed)
  sparse     block-diagonal row-normalised adjacency as torch.sparse CSR, L p = p - A p

Chamfer: p2m_geo.losses.chamfer_distance (KD-tree and chunked matmul searches) vs a dense
torch.cdist on padded batches.

Usage: python benchmarks/bm_losses.py [--quick] [--device cpu|cuda] [--write]
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
import torch
from torch_geometric import EdgeIndex
from torch_geometric.data import Batch
from torch_geometric.utils import to_dense_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, peak_memory_bytes, time_call, report  # noqa: E402

from p2m_geo import losses  # noqa: E402
from p2m_geo.mesh import ellipsoid_hierarchy  # noqa: E402


def _index_add_scatter(src, index, dim=0, dim_size=None, reduce="sum"):
    """``torch_geometric.utils.scatter``'s contract (dim 0, sum/mean) by ``index_add_`` + ``bincount``."""
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:])).index_add_(0, index, src)
    if reduce == "mean":
        count = torch.bincount(index, minlength=dim_size).clamp_min_(1).to(src.dtype)
        out = out / count.view((-1,) + (1,) * (src.dim() - 1))
    return out


#: scatter implementations swapped into p2m_geo.losses for the comparison (the library uses PyG's)
SCATTERS = {"pyg": losses.scatter, "index_add": _index_add_scatter}
try:
    import torch_scatter

    SCATTERS["torch_scatter"] = lambda src, index, dim=0, dim_size=None, reduce="sum": torch_scatter.scatter(
        src, index, dim=dim, dim_size=dim_size, reduce=reduce
    )
except ImportError:
    pass

log = logging.getLogger("bm_losses")
MAX_NEIGHBOURS = 8


def padded_neighbour_table(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """[V, 8] neighbour table padded with -1, as in the original info_ellipsoid.dat[7]."""
    table = torch.full((num_nodes, MAX_NEIGHBOURS), -1, dtype=torch.long)
    fill = [0] * num_nodes
    for s, t in edge_index.t().tolist():
        table[t, fill[t]] = s
        fill[t] += 1
    return table


class Problem:
    """One batch of B copies of a level, with perturbed positions and random GT normals."""

    def __init__(self, level: int, batch_size: int, device: torch.device, dtype=torch.float32, seed: int = 0):
        template = ellipsoid_hierarchy().levels[level]
        generator = torch.Generator().manual_seed(seed)
        self.batch = Batch.from_data_list([template] * batch_size).to(device)
        noise = torch.randn(self.batch.pos.shape, generator=generator) * 0.02
        self.before = self.batch.pos.to(dtype)
        self.after = (self.batch.pos + noise.to(device)).to(dtype)
        self.normals = torch.randn(self.batch.pos.shape, generator=generator).to(device, dtype)
        self.num_graphs, self.num_nodes = batch_size, template.num_nodes
        # padded layout (offset per graph; -1 -> a zero row appended at the end)
        table = padded_neighbour_table(template.edge_index, template.num_nodes)
        offsets = (torch.arange(batch_size) * template.num_nodes).view(-1, 1, 1)
        batched = (table.unsqueeze(0) + offsets).view(-1, MAX_NEIGHBOURS)
        batched[table.repeat(batch_size, 1) < 0] = batch_size * template.num_nodes
        self.table = batched.to(device)
        self.count = (table >= 0).sum(1).repeat(batch_size).to(device, dtype).unsqueeze(1)
        # sparse layout: row-normalised adjacency, block diagonal
        e = self.batch.edge_index
        degree = torch.bincount(e[1], minlength=self.batch.num_nodes).to(dtype)
        values = (1.0 / degree)[e[1]]
        n = self.batch.num_nodes
        self.adjacency = torch.sparse_coo_tensor(e.flip(0), values, (n, n)).coalesce().to_sparse_csr()
        self.edge_index_csr = EdgeIndex(e, sparse_size=(n, n)).sort_by("col")[0].fill_cache_()

    def regularisers(self, impl: str, pos: torch.Tensor, terms: str = "all") -> torch.Tensor:
        """``terms='laplacian'``: the Laplacian loss alone; ``'all'``: Laplacian + edge + normal."""
        b = self.batch
        if impl in SCATTERS or impl == "edgeindex":
            losses.scatter = SCATTERS.get(impl, SCATTERS["pyg"])  # benchmark-only swap
            neighbours = self.edge_index_csr if impl == "edgeindex" else b.edge_index
            try:
                value = losses.laplacian_loss(self.before, pos, neighbours, b.batch, self.num_graphs)
                if terms == "all":  # as P2MLoss computes them: one gather of the edge vectors
                    edge, normal = losses.edge_and_normal_losses(
                        pos, b.edge_index, b.batch, self.normals, self.num_graphs
                    )
                    value = value + edge + normal
                return value
            finally:
                losses.scatter = SCATTERS["pyg"]
        shape = (self.num_graphs, self.num_nodes)
        displacement = pos - self.before
        if impl == "padded":
            padded = torch.cat([displacement, displacement.new_zeros(1, 3)])
            neighbour_sum = padded.index_select(0, self.table.view(-1)).view(-1, MAX_NEIGHBOURS, 3).sum(1)
            delta = displacement - neighbour_sum / self.count
        elif impl == "sparse":
            delta = displacement - torch.sparse.mm(self.adjacency, displacement)
        else:
            raise ValueError(impl)
        lap = delta.square().sum(-1).view(shape).mean(1)
        if terms == "laplacian":
            return lap.mean()
        e = b.edge_index
        edge = pos[e[1]] - pos[e[0]]
        edge_len = edge.square().sum(-1).view(self.num_graphs, -1).mean(1)
        unit = edge / edge.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        normal = self.normals[e[0]]
        normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        normal_term = (unit * normal).sum(-1).abs().view(self.num_graphs, -1).mean(1)
        return (lap + edge_len + normal_term).mean()


def regulariser_rows(levels, batch_sizes, device, repeats) -> str:
    impls = (
        ["padded", "edgeindex", "index_add", "pyg"]
        + (["torch_scatter"] if "torch_scatter" in SCATTERS else [])
        + ["sparse"]
    )
    rows = [
        "| terms | level (V) | B | implementation | fwd ms (IQR) | fwd+bwd ms (IQR) | saved/peak MB | max abs grad err vs float64 | bit-identical grads |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for terms, level, batch_size in [(t, lv, bs) for t in ("laplacian", "all") for lv in levels for bs in batch_sizes]:
        problem = Problem(level, batch_size, device)
        ref = Problem(level, batch_size, device, dtype=torch.float64)
        pos64 = ref.after.clone().requires_grad_(True)
        grad64 = torch.autograd.grad(ref.regularisers("padded", pos64, terms), pos64)[0]
        values = {}
        for impl in impls:
            pos = problem.after.clone().requires_grad_(True)
            values[impl] = problem.regularisers(impl, pos, terms)
        reference_value = float(ref.regularisers("padded", ref.after, terms))
        for impl, value in values.items():  # all implementations must agree before timing
            if abs(value.item() - reference_value) > 1e-5 * max(1.0, abs(reference_value)):
                raise AssertionError(f"{impl} disagrees: {value.item()} vs float64 {reference_value}")
        for impl in impls:
            pos = problem.after.clone().requires_grad_(True)

            def forward():
                with torch.no_grad():
                    return problem.regularisers(impl, pos, terms)

            def forward_backward():
                return torch.autograd.grad(problem.regularisers(impl, pos, terms), pos)[0]

            fwd, fwd_iqr = time_call(forward, device, repeats)
            both, both_iqr = time_call(forward_backward, device, repeats)
            memory = peak_memory_bytes(lambda: problem.regularisers(impl, pos, terms), device) / 2**20
            grad_a, grad_b = forward_backward(), forward_backward()
            error = (grad_a.double() - grad64).abs().max().item()
            identical = bool(torch.equal(grad_a, grad_b))
            rows.append(
                f"| {terms} | {level + 1} ({problem.num_nodes}) | {batch_size} | {impl} | {fwd:.3f} ({fwd_iqr:.3f}) | "
                f"{both:.3f} ({both_iqr:.3f}) | {memory:.1f} | {error:.1e} | {'yes' if identical else 'no'} |"
            )
            log.info(rows[-1])
    return "\n".join(rows)


def dense_cdist_chamfer(x, xb, y, yb, num_graphs):
    dx, mx = to_dense_batch(x, xb, batch_size=num_graphs)
    dy, my = to_dense_batch(y, yb, batch_size=num_graphs)
    d = torch.cdist(dx, dy).square()
    big = torch.finfo(d.dtype).max
    x_to_y = d.masked_fill(~my.unsqueeze(1), big).min(2).values
    y_to_x = d.masked_fill(~mx.unsqueeze(2), big).min(1).values
    return ((x_to_y * mx).sum(1) / mx.sum(1)).mean() + ((y_to_x * my).sum(1) / my.sum(1)).mean()


def chamfer_rows(batch_sizes, device, repeats, gt_points: int = 9000) -> str:
    template = ellipsoid_hierarchy().levels[2]
    rows = ["| B | implementation | fwd+bwd ms (IQR) | saved/peak MB |", "|---|---|---|---|"]
    for batch_size in batch_sizes:
        generator = torch.Generator().manual_seed(1)
        x = (
            template.pos.repeat(batch_size, 1)
            + 0.02 * torch.randn(batch_size * template.num_nodes, 3, generator=generator)
        ).to(device)
        xb = torch.arange(batch_size).repeat_interleave(template.num_nodes).to(device)
        y = (0.3 * torch.randn(batch_size * gt_points, 3, generator=generator) + torch.tensor([0, 0, -0.8])).to(device)
        yb = torch.arange(batch_size).repeat_interleave(gt_points).to(device)
        x = x.requires_grad_(True)
        implementations = {
            "p2m_geo matmul (chunked)": lambda: sum(
                losses.chamfer_distance(x, xb, y, yb, batch_size, search="matmul")[:2]
            ),
            "dense torch.cdist": lambda: dense_cdist_chamfer(x, xb, y, yb, batch_size),
        }
        if device.type == "cpu":
            implementations["p2m_geo kdtree"] = lambda: sum(
                losses.chamfer_distance(x, xb, y, yb, batch_size, search="kdtree")[:2]
            )
        values = {name: fn().item() for name, fn in implementations.items()}
        reference = values["dense torch.cdist"]
        for name, value in values.items():
            if abs(value - reference) > 1e-4 * abs(reference):
                raise AssertionError(f"chamfer implementations disagree: {name} {value} vs {reference}")
        for name, fn in implementations.items():
            ms, iqr = time_call(lambda: torch.autograd.grad(fn(), x), device, repeats, warmup=1)
            memory = peak_memory_bytes(fn, device) / 2**20
            rows.append(f"| {batch_size} | {name} | {ms:.1f} ({iqr:.1f}) | {memory:.0f} |")
            log.info(rows[-1])
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="level 3, B in {1, 8}, few repeats (< 1 min on 2 cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message=r"Sparse (invariant checks|CSC tensor support)")
    device = torch.device(args.device)
    if args.quick:
        levels, batch_sizes, chamfer_sizes, repeats = [2], [1, 8], [1, 8], 5
    else:
        levels, batch_sizes, chamfer_sizes, repeats = [0, 1, 2], [1, 8, 32], [1, 8, 32], 20
    machine = machine_description(device)
    regularisers = regulariser_rows(levels, batch_sizes, device, repeats)
    chamfer = chamfer_rows(chamfer_sizes, device, max(3, repeats // 4))
    body = (
        f"Machine: {machine}\n\nLaplacian loss alone, and Laplacian + edge + normal losses, float32 "
        f"(memory: CUDA allocator peak on GPU, tensors saved for backward on CPU):\n\n{regularisers}\n\n"
        f"Chamfer, level-3 prediction (2466 vertices) vs 9000 GT points per graph:\n\n{chamfer}\n"
    )
    report(f"Losses ({device.type}{', quick' if args.quick else ''})", body, args.write)


if __name__ == "__main__":
    main()
