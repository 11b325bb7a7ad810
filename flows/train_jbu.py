"""Flow: train a JBU upsampler for a backbone on the images of a shard set; resumable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from prefect import flow
from pydantic import Field

from featup_flows.params import check_backbone, check_local_input

Count = Annotated[int, Field(ge=1)]


def check_arguments(params: Mapping[str, Any]) -> None:
    """A known backbone; local training shards and weights that exist."""
    check_backbone("backbone", params["backbone"])
    check_local_input("shards", params["shards"])
    check_local_input("weights", params.get("weights"))


@flow(name="train-jbu", log_prints=True)
def train_jbu(
    shards: str,
    checkpoint: str,
    backbone: str = "efficientnet_lite0",
    tap: str | None = None,
    steps: Count = 2000,
    checkpoint_every: Count = 100,
    image_size: Annotated[int, Field(ge=32)] = 224,
    batch_size: Count = 4,
    num_jitters: Count = 5,
    lr: Annotated[float, Field(gt=0)] = 1e-3,
    lr_decay: bool = False,
    head_lr: Annotated[float, Field(gt=0)] | None = None,
    range_kernel: Literal["distance", "dot"] = "distance",
    init: Literal["bilateral", "random"] = "bilateral",
    crf_weight: Annotated[float, Field(ge=0)] = 0.0,
    consistency_weight: Annotated[float, Field(ge=0)] = 0.0,
    contrast_weight: Annotated[float, Field(ge=0)] = 0.0,
    layer_fixups: bool = True,
    max_images: Count | None = None,
    seed: int = 0,
    weights: str | None = None,
    random_weights: bool = False,
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto",
    storage_secret: str | None = None,
) -> dict[str, Any]:
    """Train a JBU stack with FeatUp's multi-view loss; checkpoints go to any fsspec URL.

    Re-running with the same checkpoint URL resumes from the last saved step (a killed run loses at
    most checkpoint_every steps); a resumed run may change only the loss weights, recorded in the checkpoint.

    Args:
        shards: Dataset folder or manifest.json URL of the training images.
        checkpoint: Where the checkpoint is written (local path or s3://); load it with load_upsampler("jbu", checkpoint=...).
        backbone: Backbone name or timm model name.
        tap: Backbone layer (default: its own).
        steps: Optimisation steps in total (the published recipe: 2000).
        checkpoint_every: Save every this many steps.
        image_size: Training image side in pixels.
        batch_size: Images per step.
        num_jitters: Jittered views of each image per step (the published recipe: 5).
        lr: NAdam learning rate (the peak one with lr_decay).
        head_lr: Learning rate of the downsampler and uncertainty net (default: lr); lower it for wide heads
            (e.g. 5e-4 for 1280 channels), whose outputs one step moves in proportion to the width.
        lr_decay: Anneal the learning rate to zero over the run on a cosine (lets short runs at a higher lr settle).
        range_kernel: "distance" (featup's bilateral range kernel) or "dot" (the published layer).
        init: "bilateral" starts as the classical joint bilateral upsampler; "random" is the published start.
        crf_weight: Weight of FeatUp's dense-CRF smoothness term (the published recipe: 0.001).
        consistency_weight: Weight of a term holding each cell's plain average of the upsampled features to the
            backbone's; it lets a larger crf_weight sharpen without losing meaning (not in the published recipe).
        contrast_weight: Weight of a term holding each map's spread on the backbone's grid to the backbone's: the
            CRF term otherwise shrinks the features, which probes trained on the backbone misread (not published).
        layer_fixups: Learn each layer's signed tap correction (the published layer); without, every layer stays a
            positive-tap bilateral filter in a learned colour space, which CAMs read better (the stride-32 head's).
        max_images: Use at most this many images.
        seed: Seed of every random draw.
        weights: Backbone weights path or URL.
        random_weights: Use random backbone weights (smoke runs only).
        device: auto, cpu, cuda or cuda:N.
        storage_secret: Name of a Prefect Secret block holding fsspec storage options as JSON.
    """
    check_arguments(locals())
    # Imported here so that `featup train-jbu --help` and its argument checks skip torch (seconds).
    from featup_tasks.data import read_samples
    from featup_tasks.training import train_jbu_task

    samples = read_samples(shards, size=image_size, limit=max_images, storage_secret=storage_secret)
    images = [s["image"] for s in samples]
    if not images:
        raise ValueError(f"no readable images in {shards}")
    return train_jbu_task(images, backbone=backbone, tap=tap, steps=steps, checkpoint=checkpoint,
                          checkpoint_every=checkpoint_every, image_size=image_size, batch_size=batch_size,
                          num_jitters=num_jitters, lr=lr, head_lr=head_lr, lr_decay=lr_decay, range_kernel=range_kernel,
                          init=init, crf_weight=crf_weight, consistency_weight=consistency_weight,
                          contrast_weight=contrast_weight, layer_fixups=layer_fixups, seed=seed, weights=weights,
                          random_weights=random_weights, device=device, storage_secret=storage_secret)
