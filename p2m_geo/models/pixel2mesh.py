"""The Pixel2Mesh network on batched PyG graphs."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.profiler import record_function
from torch_geometric import EdgeIndex
from torch_geometric.data import Batch, Data

from p2m_geo.config import ModelConfig
from p2m_geo.mesh import ellipsoid_hierarchy
from p2m_geo.models.encoders import build_encoder
from p2m_geo.models.image_decoder import ImageDecoder
from p2m_geo.nn import GraphProjection, GraphUnpooling, DeformationBlock

__all__ = ["Pixel2Mesh", "Pixel2MeshOutput"]

NUM_LEVELS = 3


@dataclass
class Pixel2MeshOutput:
    """What :meth:`Pixel2Mesh.forward` returns.

    Attributes:
        meshes: three :class:`~torch_geometric.data.Batch` (156 / 618 / 2466 vertices per
            graph), the output of each deformation block, with ``pos``, ``edge_index``,
            ``face``, ``batch`` and ``ptr``.
        conv_indices: for each mesh, its edges as a column-sorted, cached PyG ``EdgeIndex``
            (what the graph convolutions used; the Laplacian loss takes its CSR path).
        pos_before: ``pos`` fed to each block (the ellipsoid, then the unpooled
            previous output), for the Laplacian and move losses.
        image_logits: ``[B,3,224,224]`` from the image branch when requested, else None.
    """

    meshes: List[Batch]
    pos_before: List[Tensor]
    image_logits: Optional[Tensor] = None
    conv_indices: List[Tensor] = field(default_factory=list)

    def float(self) -> "Pixel2MeshOutput":
        """The same output with every floating tensor in float32 (after autocast)."""
        meshes = []
        for mesh in self.meshes:
            mesh = copy.copy(mesh)
            mesh.pos = mesh.pos.float()
            meshes.append(mesh)
        logits = None if self.image_logits is None else self.image_logits.float()
        return Pixel2MeshOutput(meshes, [p.float() for p in self.pos_before], logits, self.conv_indices)


#: side of the grid the ``spatial`` depth head reads the coarsest map on (7: cnn18's map at 224 px)
DEPTH_HEAD_GRID = 7


def depth_head_input_size(channels: Sequence[int], features: str = "coarsest") -> int:
    """Length of :func:`depth_head_inputs`' rows for maps of ``channels``."""
    if features == "coarsest":
        return channels[-1]
    if features == "spatial":
        return channels[-1] * DEPTH_HEAD_GRID**2
    return 2 * sum(channels)


def coarsest_cells(feature_maps: Sequence[Tensor]) -> Tensor:
    """The last map average-pooled to a ``DEPTH_HEAD_GRID``-square grid and flattened per image,
    ``[B, C_last * 49]`` (cnn18's coarsest map at 224 px is 7 x 7 already: the map itself)."""
    return nn.functional.adaptive_avg_pool2d(feature_maps[-1].float(), DEPTH_HEAD_GRID).flatten(1)


def depth_head_inputs(feature_maps: Sequence[Tensor], features: str = "coarsest") -> Tensor:
    r"""What the depth head reads, per image: ``coarsest``: the spatial mean of the last map
    ``[B, C_last]``; ``spatial``: the last map itself, average-pooled to a
    ``DEPTH_HEAD_GRID``-square grid, flattened and divided by the number of cells
    (``[B, C_last * 49]``: a linear head on it can weigh each cell by where it is, so it sees where
    the object ends, i.e. its size in pixels; with the same weight in every cell it is the
    ``coarsest`` head, and an optimiser step of the same size per weight moves it as much);
    ``all``: the spatial mean and maximum of every map,
    :math:`\Vert_m [\operatorname{mean}_{hw} F^{(m)}, \max_{hw} F^{(m)}]`, ``[B, 2 \sum_m C_m]``."""
    if features == "coarsest":
        return feature_maps[-1].float().mean(dim=(2, 3))
    if features == "spatial":
        return coarsest_cells(feature_maps) / DEPTH_HEAD_GRID**2
    pooled = [torch.cat([fmap.float().mean(dim=(2, 3)), fmap.float().amax(dim=(2, 3))], dim=1) for fmap in feature_maps]
    return torch.cat(pooled, dim=1)


def he_zero_bias_(layer: nn.Linear) -> nn.Linear:
    """He (Kaiming-normal, for a ReLU after it) weights and a zero bias, in place, as the image
    convolutions; for the layers that read the coarsest map's cells. Returns ``layer``."""
    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    return layer


def bounded_depth_scale(raw: Tensor) -> Tensor:
    r""":math:`e^{0.5\tanh(2 r)}`, in :math:`(e^{-0.5}, e^{0.5})` and 1 at :math:`r = 0`: the factor by
    which the depth head and the depth readouts scale a mesh about the camera centre (every vertex
    keeps its pixel; the mesh moves in depth and grows with it)."""
    return torch.exp(0.5 * torch.tanh(2.0 * raw))


def laplacian_smoothing_matrix(edge_index: Tensor, num_nodes: int, strength: float) -> Tensor:
    r"""Dense :math:`(I + \lambda L)^{-1}` for one mesh, :math:`L = D - A` its graph Laplacian
    (``edge_index`` with both directions), :math:`\lambda` = ``strength``.

    Applied to per-vertex offsets it is a low-pass filter: a Laplacian eigenvector of
    eigenvalue :math:`\mu` is scaled by :math:`1 / (1 + \lambda\mu)`, so a rigid shift
    (:math:`\mu = 0`) passes unchanged and a zig-zag between neighbours (crumples,
    :math:`\mu` up to ~10) is damped the most; the folds of an unregularised model, two sides
    of a thin part pressed through each other, are smooth and pass (README, round 8). In
    backpropagation the same symmetric matrix smooths the gradient, which is the
    reparametrisation of Nicolet et al., "Large Steps in Inverse Rendering of Geometry"
    (2021). Symmetric, positive definite, rows summing to 1.

    Shapes:
        - **output:** ``[num_nodes, num_nodes]`` float32
    """
    adjacency = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    adjacency[edge_index[0], edge_index[1]] = 1.0
    laplacian = torch.diag(adjacency.sum(1)) - adjacency
    system = torch.eye(num_nodes, dtype=torch.float64) + strength * laplacian
    return torch.linalg.inv(system).float()


class Pixel2Mesh(nn.Module):
    r"""Image -> mesh by three graph-convolutional deformations of an ellipsoid.

    Block :math:`k` projects the current vertices into the image with each graph's own
    camera (:class:`~p2m_geo.nn.GraphProjection`), concatenates the previous block's
    hidden features (blocks 2 and 3), and predicts coordinate offsets with a
    :class:`~p2m_geo.nn.DeformationBlock`: :math:`\mathbf{P}_k = \mathbf{P}_{k-1}^{\uparrow} + \Delta\mathbf{P}_k`.
    Between blocks, :class:`~p2m_geo.nn.GraphUnpooling` adds edge midpoints
    (156 -> 618 -> 2466 vertices). The fixed topology of the three levels lives in
    buffers, so ``.to(device)`` and checkpoints carry it.

    Deliberate difference from the original: each block predicts offsets added to its
    input positions (:math:`\mathbf{P}_{k-1}^{\uparrow} + \Delta\mathbf{P}_k`) where the
    TensorFlow code's last convolution outputs absolute coordinates. With the output
    convolutions initialised small (:meth:`reset_parameters`), a fresh model returns the
    ellipsoid (within 1e-3) for every image, and the loss gradient still reaches the
    encoder from the first step. Block 3 ends hidden -> hidden/2 (ReLU) -> 3 as the
    original (``config.last_block_tail``); blocks 1 and 2 end hidden -> 3.

    Optional, not in the original (``config.depth_head``): a global depth estimate. A linear
    head on the mean of the encoder's coarsest map gives :math:`h`, and block 1 starts from the
    ellipsoid scaled about the camera centre, :math:`e^{0.5\tanh(2h)}\,\mathbf{P}_0`: every vertex
    keeps its pixel, the whole mesh moves in depth (and grows with it) before any offset. The
    head starts at zero (scale 1); ``config.depth_head_features: all`` feeds it the mean and the
    maximum of every map instead, ``spatial`` the coarsest map cell by cell (:func:`depth_head_inputs`);
    ``config.depth_head_hidden`` :math:`H > 0` makes it an MLP, :math:`h = w^\top \operatorname{ReLU}(W
    \operatorname{vec}(F^{(4)}_{7\times7}) + b)` with :math:`H` hidden units. Optional too
    (``config.depth_readout``): after each block, a linear readout of the mean of the block's
    hidden features :math:`\bar{\mathbf{h}}_k` scales its mesh the same way,
    :math:`\mathbf{P}_k = e^{0.5\tanh(2 r_k(\bar{\mathbf{h}}_k))}(\mathbf{P}_{k-1}^{\uparrow} + \Delta\mathbf{P}_k)`
    (zero-initialised: scale 1). Optional too (``config.global_features`` :math:`G > 0`): a global
    image code :math:`\mathbf{g} = \operatorname{ReLU}(W \operatorname{vec}(F^{(4)}_{7\times7}) + b)`
    of :math:`G` features from the coarsest map's cells (:func:`coarsest_cells`), appended to
    every vertex's sampled features in every block: the projection gives a vertex only the pixels
    it falls on, the code the whole image (He-initialised, zero bias, as the image convolutions).

    Args:
        config (ModelConfig): architecture; the default is the 2018 PyTorch port's
            (cnn18, hidden 192, 6 residual pairs).

    Shapes:
        - **input:** ``images`` :math:`(B, 3, 224, 224)` in :math:`[0,1]`, ``intrinsics`` :math:`(B, 3, 3)`
        - **output:** :class:`Pixel2MeshOutput`
    """

    def __init__(self, config: Optional[ModelConfig] = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        hierarchy = ellipsoid_hierarchy()
        for level, data in enumerate(hierarchy.levels):
            self.register_buffer(f"pos_{level}", data.pos)
            self.register_buffer(f"edge_index_{level}", data.edge_index)
            self.register_buffer(f"face_{level}", data.face)
            if level < NUM_LEVELS - 1:
                self.register_buffer(f"unpool_index_{level}", data.unpool_index)
            if config.offset_smoothing > 0:  # derived from the topology: not in checkpoints
                filter_matrix = laplacian_smoothing_matrix(data.edge_index, data.num_nodes, config.offset_smoothing)
                self.register_buffer(f"offset_filter_{level}", filter_matrix, persistent=False)
        self.encoder = build_encoder(
            config.backbone, config.encoder_width, config.backbone_weights, config.pretrained, config.encoder_norm
        )
        feature_dim = 3 + sum(self.encoder.channels) + config.global_features
        self.projection = GraphProjection(config.image_size)
        self.unpooling = GraphUnpooling()
        self.blocks = nn.ModuleList(
            DeformationBlock(
                feature_dim + (config.hidden if level > 0 else 0),
                config.hidden,
                config.num_residual,
                aggr=config.aggr,
                tail_channels=config.hidden // 2 if config.last_block_tail and level == NUM_LEVELS - 1 else None,
            )
            for level in range(NUM_LEVELS)
        )
        self.image_decoder = ImageDecoder(self.encoder.channels) if config.image_branch else None
        head_inputs = depth_head_input_size(self.encoder.channels, config.depth_head_features)
        self.depth_head_hidden_layer = (
            nn.Linear(head_inputs, config.depth_head_hidden) if config.depth_head and config.depth_head_hidden else None
        )
        if self.depth_head_hidden_layer is not None:
            head_inputs = config.depth_head_hidden
        self.depth_head = nn.Linear(head_inputs, 1) if config.depth_head else None
        if self.depth_head is not None:
            self._reset_depth_head()
        self.depth_readout = (
            nn.ModuleList(nn.Linear(config.hidden, 1) for _ in range(NUM_LEVELS)) if config.depth_readout else None
        )
        if self.depth_readout is not None:
            self._reset_depth_readout()
        self.global_code = (
            nn.Linear(depth_head_input_size(self.encoder.channels, "spatial"), config.global_features)
            if config.global_features > 0
            else None
        )
        if self.global_code is not None:
            he_zero_bias_(self.global_code)
        self._topology_cache: Dict[Tuple, Tuple[Batch, EdgeIndex]] = {}
        self.compiled = False

    def reset_parameters(self) -> None:
        """Re-initialise every weight as the originals do: He with zero biases for the
        image convolutions (local ``backbone_weights`` are loaded again), Glorot with zero
        biases for the graph convolutions, a small Glorot gain on each block's output."""
        self.encoder.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        if self.image_decoder is not None:
            self.image_decoder.reset_parameters()
        if self.depth_head is not None:
            self._reset_depth_head()
        if self.depth_readout is not None:
            self._reset_depth_readout()
        if self.global_code is not None:
            he_zero_bias_(self.global_code)

    def _reset_depth_readout(self) -> None:
        """Zero weights and biases: each block's scale starts at 1."""
        for readout in self.depth_readout:
            nn.init.zeros_(readout.weight)
            nn.init.zeros_(readout.bias)

    def _reset_depth_head(self) -> None:
        """Zero weights and bias: a fresh model starts from the ellipsoid as it is (scale 1); the
        head's own weights still get gradients from the first step."""
        nn.init.zeros_(self.depth_head.weight)
        nn.init.zeros_(self.depth_head.bias)
        if self.depth_head_hidden_layer is not None:
            he_zero_bias_(self.depth_head_hidden_layer)

    def depth_scale(self, feature_maps: Sequence[Tensor]) -> Tensor:
        r"""Per-image scale :math:`e^{0.5 \tanh(2 h)}` of the starting ellipsoid (:func:`bounded_depth_scale`),
        :math:`h` the depth head's output on :func:`depth_head_inputs` of the encoder's maps (each
        ``[B,C,h,w]``) -> ``[B]``."""
        if self.depth_head_hidden_layer is None:
            inputs = depth_head_inputs(feature_maps, self.config.depth_head_features)
        else:  # the cells themselves (not / 49): the hidden layer is He-initialised for them
            inputs = torch.relu(self.depth_head_hidden_layer(coarsest_cells(feature_maps)))
        return bounded_depth_scale(self.depth_head(inputs).squeeze(-1))

    def compile_submodules(self, **compile_kwargs) -> "Pixel2Mesh":
        """``torch.compile`` the encoder, the image decoder and each deformation block, in
        place (``state_dict`` keys unchanged). The graph convolutions then aggregate over the
        plain ``edge_index`` (scatter), since ``EdgeIndex``'s cached sparse tensors do not
        trace. Glue between blocks (projection, unpooling, ``Batch`` bookkeeping) stays eager.
        Returns ``self``."""
        self.encoder.compile(**compile_kwargs)
        for block in self.blocks:
            block.compile(**compile_kwargs)
        if self.image_decoder is not None:
            self.image_decoder.compile(**compile_kwargs)
        self.compiled = True
        return self

    def template(self, level: int) -> Data:
        """The undeformed ellipsoid of ``level`` (0, 1, 2) as a single-graph ``Data``."""
        data = Data(
            pos=getattr(self, f"pos_{level}"),
            edge_index=getattr(self, f"edge_index_{level}"),
            face=getattr(self, f"face_{level}"),
        )
        if level < NUM_LEVELS - 1:
            data.unpool_index = getattr(self, f"unpool_index_{level}")
        return data

    def batched_template(self, level: int, batch_size: int) -> Batch:
        """``batch_size`` copies of :meth:`template` as a ``Batch`` (offsets by PyG), cached."""
        return self._batched(level, batch_size)[0]

    def _batched(self, level: int, batch_size: int) -> Tuple[Batch, EdgeIndex]:
        """The cached batched template and its ``conv_index``: the same edges as a column-sorted
        PyG ``EdgeIndex`` with its CSR cache filled, which makes each ``GraphConv``
        aggregation a sparse matrix product (about 2x faster than scatter on CPU)."""
        buffer = getattr(self, f"pos_{level}")
        key = (level, batch_size, buffer.device, buffer.dtype)
        cached = self._topology_cache.get(key)
        if cached is None:
            batch = Batch.from_data_list([self.template(level)] * batch_size)
            conv_index = EdgeIndex(batch.edge_index, sparse_size=(batch.num_nodes, batch.num_nodes))
            cached = (batch, conv_index.sort_by("col")[0].fill_cache_())
            self._topology_cache[key] = cached
        return cached

    def image_memory_format(self) -> torch.memory_format:
        """``torch.channels_last`` after ``model.to(memory_format=torch.channels_last)`` (the
        encoder's convolutions then run NHWC: ~10-30% faster on CPU with oneDNN, and the
        layout GPU tensor cores want), else ``torch.contiguous_format``. :meth:`forward`
        converts input images to it."""
        weight = next(p for p in self.encoder.parameters() if p.dim() == 4)
        channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        return torch.channels_last if channels_last else torch.contiguous_format

    def _apply(self, fn, *args, **kwargs):
        self._topology_cache = {}
        return super()._apply(fn, *args, **kwargs)

    def forward(self, images: Tensor, intrinsics: Tensor, reconstruct_image: bool = False) -> Pixel2MeshOutput:
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"images: expected [B,3,H,W], got {list(images.shape)}")
        batch_size = images.size(0)
        if intrinsics.shape != (batch_size, 3, 3):
            raise ValueError(
                f"intrinsics: expected [{batch_size},3,3] (one camera per image), got {list(intrinsics.shape)}"
            )
        with record_function("p2m.encoder"):
            feature_maps = self.encoder(images.contiguous(memory_format=self.image_memory_format()))
        intrinsics = intrinsics.to(feature_maps[0].dtype)

        # torch's CSR kernels have no bfloat16 path and do not trace: under autocast or
        # torch.compile aggregate by scatter over the plain edge_index instead
        use_csr = not (torch.is_autocast_enabled(images.device.type) or self.compiled)
        global_code = None
        if self.global_code is not None:
            global_code = torch.relu(self.global_code(coarsest_cells(feature_maps).to(self.global_code.weight.dtype)))
        meshes, pos_before, conv_indices = [], [], []
        topology, conv_index = self._batched(0, batch_size)
        pos, hidden = topology.pos, None
        if self.depth_head is not None:  # about the camera centre: the same projection, another depth
            pos = pos * self.depth_scale(feature_maps).to(pos.dtype)[topology.batch, None]
        for level, block in enumerate(self.blocks):
            if level > 0:
                previous = meshes[-1]
                with record_function("p2m.unpooling"):
                    carried, _ = self.unpooling(
                        torch.cat([previous.pos, hidden], dim=-1), previous.unpool_index, previous.batch
                    )
                topology, conv_index = self._batched(level, batch_size)
                pos, hidden = carried[:, :3], carried[:, 3:]
            with record_function("p2m.projection"):
                features = self.projection(
                    pos, topology.batch, intrinsics, feature_maps, nodes_per_graph=pos.size(0) // batch_size
                )
            if global_code is not None:
                features = torch.cat([features, global_code.to(features.dtype)[topology.batch]], dim=-1)
            if hidden is not None:
                features = torch.cat([features, hidden], dim=-1)
            with record_function("p2m.gresnet"):
                offset, hidden = block(features, conv_index if use_csr else topology.edge_index)
            if self.config.offset_smoothing > 0:
                filter_matrix = getattr(self, f"offset_filter_{level}").to(offset.dtype)
                offset = torch.matmul(filter_matrix, offset.view(batch_size, -1, 3)).view(-1, 3)
            if self.config.offset_bound > 0:
                offset = self.config.offset_bound * torch.tanh(offset / self.config.offset_bound)
            pos_before.append(pos)
            mesh = copy.copy(topology)  # shares the cached topology tensors
            mesh.pos = pos + offset
            if self.depth_readout is not None:  # the whole mesh in depth, its projection kept
                pooled = hidden.view(batch_size, -1, hidden.size(-1)).mean(dim=1)
                scale = bounded_depth_scale(self.depth_readout[level](pooled.float()).squeeze(-1))
                mesh.pos = mesh.pos * scale.to(pos.dtype)[topology.batch, None]
            meshes.append(mesh)
            conv_indices.append(conv_index)

        image_logits = None
        if reconstruct_image:
            if self.image_decoder is None:
                raise ValueError("reconstruct_image: the model was built with image_branch=False")
            with record_function("p2m.image_decoder"):
                image_logits = self.image_decoder(feature_maps)
        return Pixel2MeshOutput(meshes, pos_before, image_logits, conv_indices)
