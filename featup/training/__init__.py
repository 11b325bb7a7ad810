"""Training FeatUp's upsamplers by multi-view consistency: the JBU stack over a dataset, the implicit model per image.

Both loops jitter the image, run the frozen backbone on every view, jitter the high-res features the
same way, pool them with a learned downsampler onto the backbone's grid and score them against the
view's features with the uncertainty-weighted Gaussian likelihood (``featup.losses``).

Speed, without changing the objective:

- every linear step after the upsampler (projection, jitter, blur, attention pooling) commutes with
  the others, so features are projected to the loss's random 30-d subspaces BEFORE jittering and
  pooling, and the attention downsampler's saliency logits (computed once from the full features)
  are jittered alongside: a 384-channel backbone's views cost what 31 channels cost;
- all views of a step go through the backbone, the jitter (one ``grid_sample``) and the downsampler
  as one batch, and the upsampler runs once per step rather than once per view;
- implicit fitting featurises a pool of jittered views once and draws batches from it; its default
  recipe takes fewer steps at a higher learning rate with a cosine decay (docs/benchmarks.md has the
  comparison with the published one); on a GPU both loops run under bfloat16 autocast.

Every random draw comes from ``seed``: a step's draws (batch, jitters, projections, dropout) depend only
on ``(seed, step)``, so a resumed run continues exactly as an uninterrupted one would.
"""

from featup.training.implicit import fit_implicit, fit_implicit_batch
from featup.training.jbu import train_jbu, training_state_path

__all__ = ["fit_implicit", "fit_implicit_batch", "train_jbu", "training_state_path"]
