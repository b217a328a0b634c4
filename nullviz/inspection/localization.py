"""Does attention find the object? The share of attention inside a scene's digit box against the box's
share of the image, for the last layer's output-query attention and for rollout."""

from __future__ import annotations

import torch

from nullviz.data.scenes import Scenes, fixed_scenes

from .attention import attention_views, cls_attention_maps, rollout, rollout_map, trace


def box_mask(boxes: torch.Tensor, grid: tuple[int, int], img_size: tuple[int, int]) -> torch.Tensor:
    """[B, gh·gw] share of each patch's area that lies inside each image's box (0…1)."""
    gh, gw = grid
    ph, pw = img_size[0] / gh, img_size[1] / gw
    rows = torch.arange(gh, dtype=torch.float32)
    cols = torch.arange(gw, dtype=torch.float32)
    b = boxes.float()

    def overlap(lo, hi, start, size):  # [B, n] length of [start, start + size) ∩ [lo, hi)
        return (torch.minimum(hi[:, None], start[None] + size) - torch.maximum(lo[:, None], start[None])).clamp(min=0)

    oy = overlap(b[:, 1], b[:, 3], rows * ph, ph) / ph
    ox = overlap(b[:, 0], b[:, 2], cols * pw, pw) / pw
    return (oy[:, :, None] * ox[:, None, :]).reshape(len(b), gh * gw)


def box_attention_ratio(attention: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int],
                        img_size: tuple[int, int]) -> dict[str, float]:
    """How much more of the attention falls inside the object's box than the box's share of the image.

    ``attention``: [B, gh·gw] non-negative weights over the patches (e.g. the last layer's CLS row without the
    prefix tokens, or rollout). Each row is renormalised over the patches; the mass inside is the
    area-weighted sum over the patches the box covers. Ratio = mean mass inside / mean box area share
    (1 = attention spread evenly; the goal for a model that *finds* the digit is ≥ 2)."""
    w = attention.float()
    w = w / w.sum(1, keepdim=True).clamp(min=1e-12)
    mask = box_mask(boxes, grid, img_size)
    inside = (w * mask).sum(1)
    share = mask.mean(1)
    return {"mass_inside": float(inside.mean()), "box_share": float(share.mean()),
            "ratio": float(inside.mean() / share.mean()),
            "ratio_per_image_median": float((inside / share).median())}


def localization(lm, scenes: Scenes | None = None, batch_size: int = 250) -> dict[str, dict[str, float]]:
    """The attention-in-box ratio of a model on scenes (default: the held-out scenes): for the last layer's
    output-query attention (mean over heads) and for attention rollout. A model that *finds* the digit
    puts far more than the box's share of its attention inside the box."""
    scenes = scenes if scenes is not None else fixed_scenes("heldout")
    last, rolled = [], []
    views = attention_views(lm)
    for start in range(0, len(scenes), batch_size):
        x = lm.normalize(scenes.pixels[start:start + batch_size]).to(lm.device)
        tr = trace(lm.model, x, views=views)
        last.append(cls_attention_maps(tr.attention[-1:], tr.num_prefix_tokens, tr.grid_size,
                                       tr.has_class_token)[0].mean(1).flatten(1))
        rolled.append(rollout_map(rollout(tr.attention), tr.num_prefix_tokens, tr.grid_size,
                                  tr.has_class_token).flatten(1))
    grid, size = lm.grid_size, lm.img_size
    return {"last_layer": box_attention_ratio(torch.cat(last), scenes.boxes, grid, size),
            "rollout": box_attention_ratio(torch.cat(rolled), scenes.boxes, grid, size)}
