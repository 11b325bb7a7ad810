"""Training tasks: fit a JBU upsampler for a backbone on shard images, with resumable checkpoints."""

from __future__ import annotations

import sys
from typing import Any

import torch
from prefect import get_run_logger, task

from featup.training import train_jbu
from featup_tasks import models
from featup_tasks.storage import storage_options


@task(name="train-jbu", tags=["gpu"], persist_result=False)
def train_jbu_task(images: list[torch.Tensor], *, backbone: str, tap: str | None, steps: int, checkpoint: str,
                   checkpoint_every: int, image_size: int, batch_size: int, num_jitters: int, lr: float,
                   head_lr: float | None, lr_decay: bool, range_kernel: str, init: str, crf_weight: float,
                   consistency_weight: float, contrast_weight: float, layer_fixups: bool, seed: int,
                   weights: str | None,
                   random_weights: bool, device: str, storage_secret: str | None) -> dict[str, Any]:
    """Train (or resume training of) a JBU stack; the checkpoint at ``checkpoint`` is the result."""
    from featup.pipeline import pick_device

    logger = get_run_logger()
    bb = models.backbone(backbone, tap, weights, random_weights=random_weights)
    bb = bb.to(pick_device(device))

    def log(entry: dict[str, float]) -> None:
        if entry.get("step", 0) % max(1, steps // 20) == 0:
            logger.info("step %s: %s", entry.get("step"), {k: round(v, 5) for k, v in entry.items() if k != "step"})

    _, history = train_jbu(bb, images, steps, batch_size=batch_size, num_jitters=num_jitters, lr=lr,
                           head_lr=head_lr, lr_decay=lr_decay, range_kernel=range_kernel, init=init,
                           crf_weight=crf_weight, consistency_weight=consistency_weight, contrast_weight=contrast_weight,
                           layer_fixups=layer_fixups,
                           image_size=image_size, seed=seed, checkpoint=checkpoint,
                           checkpoint_every=checkpoint_every, resume=True,
                           storage_options=storage_options(storage_secret),
                           progress=sys.stderr.isatty(),  # a bar in a terminal; a worker's log gets the lines above
                           log=log)
    last = history[-1] if history else {}
    logger.info("trained to step %d; checkpoint %s", steps, checkpoint)
    return {"checkpoint": checkpoint, "steps": steps, "final": last}
