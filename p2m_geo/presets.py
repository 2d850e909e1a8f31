"""Named presets: the same code, different widths/depths, schedules and data. Mesh levels never change."""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["PRESETS"]

#: preset name -> config sections to merge over the defaults
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    # The original architecture (cnn18, hidden 192, 14/14/15 graph convolutions): ~37 GFLOP per
    # training sample, ~3.8 samples/s on 2 CPU cores; meant for a GPU.
    "full": {},
    # Narrow encoder and G-ResNet for a ~14-minute CPU run on 2 cores (the budget, README). Laplacian
    # x3 (1.5): it halved the self-intersecting faces on the real example renderings at the same F@tau
    # (README, round 3).
    # One residual pair per block and 2000 of each cloud's GT points per step make an epoch ~1.2x
    # cheaper, spent on 10 epochs instead of 8 (lr x0.3 after 8): in the same wall time F@tau 29.4 /
    # CD 1.95 against 26.0 / 2.52 with two pairs, 4000 points and 8 epochs (README, round 7).
    # Per-epoch validation on 65 of the 260 views (5 per class): ~8 s an epoch instead of ~23 s.
    # A global depth head (model.depth_head: the starting ellipsoid scaled about the camera centre
    # per image): F@tau 30.3 / CD 1.85 against 29.2 / 1.96 at no extra cost (README, round 10). A
    # depth readout after each block (model.depth_readout: the block's mesh scaled the same way by
    # a linear map of its mean hidden features): F@tau 32.3 / CD 1.61 against 30.3 / 1.85, as clean
    # (README, round 12). The depth head reading the coarsest map cell by cell (7 x 7) instead of its
    # mean, so it sees where the object ends: F@tau 33.6 / CD 1.49 against 32.4 / 1.60, as clean
    # (README, round 13). 11 epochs at lr 7e-4 (x0.3 after 9) instead of 10 at 5e-4 (x0.3 after 8),
    # the budget's ~10% left over spent: over three seeds F@tau 33.7 / CD 1.46 against 32.4 / 1.60,
    # every class >= 2.17x its blank image for every seed, at 0.96-1.02x the budget (README, round 15).
    # Batch norms after cnn18's 13 stage convolutions (model.encoder_norm; the stem at 224/112 px
    # stays without, where they would cost a fifth of the step): F@tau 34.9 / CD 1.39 against
    # 33.8 / 1.39 at 1.01x the step cost; over three seeds 34.2 / 1.47 against 33.7 / 1.46, every
    # class >= 2.66x its blank image for every seed (README, round 19).
    # The learning rate held at 7e-4 through epoch 9, then decayed linearly step by step to 0 after the
    # last step (train.lr_schedule: linear-decay) instead of x0.3 after epoch 9: the same first nine
    # epochs, then F@tau 36.0 / CD 1.31 against 34.9 / 1.39; over three seeds 35.0 / 1.41 against
    # 34.2 / 1.47, each seed 0.7-1.1 points higher (README, round 20).
    # Decoded views kept in memory (data.cache_mb; the 988 training views take ~0.8 GB): epochs after
    # the first skip the PNG and .dat decoding, 0.35 s of loading an epoch instead of 2.9 s, with the
    # same batches (benchmarks/bm_loading.py, benchmarks/RESULTS.md).
    # Data loaded in the training process (workers 0): loading is ~20x cheaper than a step, and a
    # worker process takes CPU from the step's two threads; the same batches, 1.09x faster per epoch
    # on 2 cores in short runs timed in turns, 3% in a whole run (benchmarks/RESULTS.md). On more
    # cores, --workers 1 or 2 overlaps it.
    "cpu-quick": {
        "model": {
            "encoder_width": 0.25,
            "hidden": 64,
            "num_residual": 1,
            "depth_head": True,
            "depth_readout": True,
            "depth_head_features": "spatial",
            "encoder_norm": "batch",
        },
        "loss": {"laplacian": 1.5},
        "train": {
            "epochs": 11,
            "batch_size": 8,
            "lr": 7e-4,
            "lr_schedule": "linear-decay",
            "lr_milestones": [9],
            "workers": 0,
            "gt_points": 2000,
            "eval_max_samples": 65,
        },
        "data": {"synth_per_class": 24, "synth_views": 4, "cache_mb": 1024},
    },
    # cpu-quick's network as it was until round 7 (two residual pairs, 4000 GT points), with the
    # original's Laplacian weight (0.5), trained 24 epochs (about 35 minutes on 2 cores): the
    # README's longer run.
    "cpu-long": {
        "model": {"encoder_width": 0.25, "hidden": 64, "num_residual": 2},
        "train": {
            "epochs": 24,
            "batch_size": 8,
            "lr": 5e-4,
            "lr_milestones": [16, 21],
            "workers": 1,
            "gt_points": 4000,
        },
        "data": {"synth_per_class": 24, "synth_views": 4},
    },
    # The bundled models' base: the ImageNet-pretrained EfficientNet-Lite0 encoder ([pretrained] extra)
    # on the procedural set, version 1: trained the same way on version 2 it scored lower on the real
    # car and biplane (README). ~25 min alone on 2 cores. The bundled model
    # (p2m_geo/pretrained/lite0-depth-synth3.pt, since round 18) is this preset with
    # benchmarks/variant_configs/bundled/lite0-depth-biplanes.yaml (the depth head and readouts, and data
    # version 3: version 1 with biplanes among the airplanes): real car F@tau 31.7, biplane 21.2; with the
    # head and readouts on version 1 (lite0-depth-synth1, round 17) 32.2 / 15.8, without them (lite0-synth1)
    # 23.1 / 18.6.
    "bundled": {
        "model": {"backbone": "efficientnet-lite0", "hidden": 64, "num_residual": 2},
        "train": {"epochs": 6, "batch_size": 8, "lr": 5e-4, "lr_milestones": [5], "workers": 1, "gt_points": 4000},
        "data": {"synth_per_class": 24, "synth_views": 4, "synth_version": 1},
    },
}
