"""The implicit fit's recipes: every choice of a fit except the image, the backbone and the seed, by name.

``featup.training.implicit``'s docstring says what the published recipe and featup's default do.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from featup.upsamplers.implicit import BASE_MODES


@dataclass(frozen=True)
class ImplicitRecipe:
    """Everything that decides an implicit fit except the image, the backbone and the seed."""

    steps: int = 200
    views: int = 256
    views_per_step: int = 10
    lr: float = 2e-2
    lr_decay: bool = True
    warmup_steps: int = 20
    max_pad: int = 30
    max_zoom: float = 1.8
    proj_dim: int = 128
    projection_dim: int | None = None
    pca_views: int = 50
    magnitude_weight: float = 0.001
    tv_weight: float = 0.05
    blur_pin_weight: float = 0.1
    edge_weight: float = 0.0
    edge_sigma: float = 0.1
    windows: str = "centred"
    base: str | None = None
    guide_sigma_spatial: float = 0.8
    guide_sigma_range: float = 0.15
    guide_radius: int = 2
    guide_iterations: int = 10
    guide_step: int | None = None
    guide_refine_sigma_spatial: float = 1.5
    guide_refine_sigma_range: float = 0.1
    n_freqs: int = 30
    min_log_freq: float = -2.0
    max_log_freq: float = 10.0
    hidden_dim: int = 128
    dropout: float = 0.2
    learn_phases: bool = True
    uniform_attention: bool = False
    featurize_batch: int = 64


RECIPES: dict[str, ImplicitRecipe] = {
    # The published recipe: 1200 NAdam steps of 10 views from 3000, constant rate, the published windows.
    "published": ImplicitRecipe(steps=1200, views=3000, lr=2e-3, lr_decay=False, windows="published"),
    # featup before issue 13: the published objective on a pool of 256 views, 200 steps at a 10× rate.
    "featup-v0": ImplicitRecipe(),
    # The default: residual over the guided base, 8× in one step then in image-guided doublings (sharper
    # edges on the CAM head, session 15; no back-projection: it painted texture into depth), uniform
    # attention at the start, a gentle correction (frequencies to e^1, lr 1e-4: at this budget a faster or
    # higher-frequency MLP painted colour texture and moved cells off the backbone's features, session 14),
    # edge-aware smoothness instead of blur-pin, TV and magnitude terms, a CPU budget (docs/bench/implicit.md).
    "featup": ImplicitRecipe(steps=30, views=48, views_per_step=4, lr=1e-4, warmup_steps=5, pca_views=48,
                             base="guided", guide_sigma_spatial=0.5, guide_sigma_range=0.25, guide_iterations=0,
                             guide_step=8,
                             uniform_attention=True, max_log_freq=1.0, edge_weight=1.0, blur_pin_weight=0.0,
                             magnitude_weight=0.0, tv_weight=0.0, dropout=0.0, learn_phases=False),
}


def implicit_recipe(recipe: str | ImplicitRecipe = "featup", **overrides) -> ImplicitRecipe:
    """A named recipe (``RECIPES``) or a given one, with some fields replaced."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown implicit recipe {recipe!r}; choose one of {sorted(RECIPES)}")
        recipe = RECIPES[recipe]
    names = {f.name for f in fields(ImplicitRecipe)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown implicit fit options {unknown}; the recipe's fields are {sorted(names)}")
    # None means "not given" (CLI flags left unset), except for the fields where None is a setting of its own.
    given = {k: v for k, v in overrides.items() if v is not None or k in ("projection_dim", "guide_step")}
    recipe = replace(recipe, **given)
    if recipe.base not in (None, *BASE_MODES):
        raise ValueError(f"unknown base {recipe.base!r}; choose None (the published model) or one of {BASE_MODES}")
    if recipe.guide_step is not None and recipe.guide_step < 2:
        raise ValueError(f"guide_step is the guided base's first upsampling factor: an integer ≥ 2, or None to "
                         f"upsample in one step; got {recipe.guide_step}")
    if recipe.windows not in ("centred", "published"):
        raise ValueError(f"unknown windows {recipe.windows!r}; choose 'centred' or 'published'")
    if recipe.steps < 0 or recipe.views < 1 or recipe.views_per_step < 1:
        raise ValueError(f"got steps={recipe.steps}, views={recipe.views}, views_per_step={recipe.views_per_step}; "
                         "expected steps >= 0 and at least one view")
    return recipe
