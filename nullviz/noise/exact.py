"""The exact nullspace N_θ of a ViT's patch embedding, noise drawn from it, and the proof that it is invisible.

The patch embedding f_θ maps every patch (c·r² numbers, flattened like the conv kernel: channel, row,
column) to d numbers with one matrix W ∈ R^{d × c·r²} (the whole conv kernel, all channels together — the
research code's per-channel nullspace is only a subset). Any v with W v = 0 added to every patch leaves the
patch tokens, and hence every later layer and the logits, unchanged. When c·r² > d the nullity is at least
c·r² − d; a trained square W (ViT-B/16) can still be numerically rank-deficient, which the singular
spectrum shows.

All noise lives in the model's *normalised* input space (where the conv acts); ``to_pixels`` converts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from nullviz.core.errors import InvalidParameterError
from nullviz.core.params import Interval, Options, check
from nullviz.core.precision import FLOAT32_NEGLIGIBLE, is_rounding
from nullviz.models import LoadedModel, logits_from_patch_tokens, patch_tokens, token_grid


_F32_EPS = float(torch.finfo(torch.float32).eps)


# ------------------------------------------------------------------------------------ patches ↔ images
def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] → [B, N, C·p·p], each row flattened in the conv kernel's (channel, row, column) order."""
    return F.unfold(x, kernel_size=patch_size, stride=patch_size).transpose(1, 2)


def unpatchify(patches: torch.Tensor, patch_size: int, image_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, N, C·p·p] → [B, C, H, W]."""
    return F.fold(patches.transpose(1, 2), output_size=tuple(image_size), kernel_size=patch_size,
                  stride=patch_size)


def patch_embed_matrix(model: torch.nn.Module) -> torch.Tensor:
    """W = the patch embedding's conv kernel as a d × c·r² matrix (float64, CPU)."""
    weight = model.patch_embed.proj.weight.detach()
    return weight.reshape(weight.shape[0], -1).to("cpu", torch.float64)


# ---------------------------------------------------------------------------------------- the spectrum
@dataclass(frozen=True)
class PatchEmbedSpectrum:
    """Singular values of W and an orthonormal basis of its row space (computed once per model)."""

    singular_values: torch.Tensor  # [min(d, K)], descending, float64
    right_vectors: torch.Tensor  # [K, min(d, K)]: right singular vectors, same order, float64
    input_dim: int  # K = c·r²
    embed_dim: int  # d
    patch_size: int
    in_chans: int

    def default_rtol(self) -> float:
        """numpy's matrix_rank convention at float32 precision: max(d, K)·eps₃₂ relative to σ_max."""
        return max(self.input_dim, self.embed_dim) * _F32_EPS


def patch_embed_spectrum(model: torch.nn.Module) -> PatchEmbedSpectrum:
    """SVD of W via the d×d Gram matrix in float64 (fast for d ≤ K; exact enough far below float32 noise)."""
    W = patch_embed_matrix(model)
    d, K = W.shape
    if d <= K:
        evals, U = torch.linalg.eigh(W @ W.T)  # ascending
        evals, U = evals.flip(0).clamp_min(0), U.flip(1)
        s = evals.sqrt()
        safe = torch.where(s > 0, s, torch.ones_like(s))
        V = (W.T @ U) / safe  # columns with s == 0 are meaningless; they fall outside the rank
        V = torch.where(s > 0, V, torch.zeros_like(V))
    else:
        _, s, Vh = torch.linalg.svd(W, full_matrices=False)
        V = Vh.T
    pe = model.patch_embed
    return PatchEmbedSpectrum(singular_values=s, right_vectors=V, input_dim=K, embed_dim=d,
                              patch_size=int(pe.patch_size[0]), in_chans=int(pe.proj.in_channels))


def cached_spectrum(lm: LoadedModel) -> PatchEmbedSpectrum:
    """The spectrum of a loaded (frozen) model, computed once and kept on the LoadedModel."""
    return lm.derived.get("spectrum", lambda: patch_embed_spectrum(lm.model))


# ---------------------------------------------------------------------------------------- the nullspace
@dataclass
class Nullspace:
    """N_θ under a relative tolerance: rank, nullity, projectors and (lazily) an orthonormal basis.

    ``rank`` counts singular values above ``rtol·σ_max``; directions below are numerically null. With
    nullity 0 (a full-rank ViT-B/16), ``weakest_directions`` gives the "approximately null" directions.
    """

    spectrum: PatchEmbedSpectrum
    rtol: float
    rank: int
    _basis: torch.Tensor | None = field(default=None, repr=False)
    _smooth: torch.Tensor | None = field(default=None, repr=False)

    @property
    def nullity(self) -> int:
        return self.spectrum.input_dim - self.rank

    @property
    def input_dim(self) -> int:
        return self.spectrum.input_dim

    @property
    def embed_dim(self) -> int:
        return self.spectrum.embed_dim

    @property
    def patch_size(self) -> int:
        return self.spectrum.patch_size

    @property
    def row_basis(self) -> torch.Tensor:
        """[K, rank] orthonormal basis of the row space (the directions the patch embedding sees)."""
        return self.spectrum.right_vectors[:, : self.rank]

    @property
    def basis(self) -> torch.Tensor:
        """[K, nullity] orthonormal basis of the nullspace (complement of the row basis by QR; computed once)."""
        if self._basis is None:
            K = self.input_dim
            if self.rank == 0:
                self._basis = torch.eye(K, dtype=torch.float64)
            else:  # Householder QR of the row basis; apply Q to [0; I] to get only its last K − r columns
                reflectors, tau = torch.geqrf(self.row_basis)
                tail = torch.zeros(K, K - self.rank, dtype=reflectors.dtype)
                tail[self.rank:] = torch.eye(K - self.rank, dtype=reflectors.dtype)
                self._basis = torch.ormqr(reflectors, tau, tail).contiguous()
        return self._basis

    def weakest_directions(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k right singular vectors with the smallest singular values, and those values."""
        n = self.spectrum.singular_values.numel()
        k = max(0, min(k, n))
        return self.spectrum.right_vectors[:, n - k:], self.spectrum.singular_values[n - k:]

    # projections act on [..., K] patch vectors
    def project(self, patches: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection onto N_θ: u − V_r V_rᵀ u."""
        V = self.row_basis.to(patches.device, patches.dtype)
        return patches - (patches @ V) @ V.T

    def project_off(self, patches: torch.Tensor) -> torch.Tensor:
        """The component the patch embedding sees (onto the row space): V_r V_rᵀ u."""
        V = self.row_basis.to(patches.device, patches.dtype)
        return (patches @ V) @ V.T

    def project_image(self, v: torch.Tensor, onto: bool = True) -> torch.Tensor:
        """Project an image-shaped perturbation [C, H, W] or [B, C, H, W] patch-wise onto (or off) N_θ."""
        squeeze = v.dim() == 3
        vb = v.unsqueeze(0) if squeeze else v
        p = patchify(vb, self.patch_size)
        p = self.project(p) if onto else self.project_off(p)
        out = unpatchify(p, self.patch_size, vb.shape[-2:])
        return out[0] if squeeze else out

    def residual_ratio(self, v: torch.Tensor) -> float:
        """Self-check ‖W v‖ / (σ_max ‖v‖) over all patches: ~1e-16 in float64 for exact null noise."""
        squeeze = v.dim() == 3
        p = patchify(v.unsqueeze(0) if squeeze else v, self.patch_size).to(torch.float64).cpu()
        Wv = (p @ self.spectrum.right_vectors) * self.spectrum.singular_values
        denom = float(self.spectrum.singular_values[0]) * float(p.norm())
        return float(Wv.norm()) / denom if denom > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        s = self.spectrum.singular_values
        return {"input_dim": self.input_dim, "embed_dim": self.embed_dim, "rank": self.rank,
                "nullity": self.nullity, "rtol": self.rtol, "patch_size": self.patch_size,
                "sigma_max": float(s[0]), "sigma_min": float(s[-1]),
                "singular_values": [float(v) for v in s]}


def nullspace(lm_or_model: LoadedModel | torch.nn.Module, rtol: float | None = None) -> Nullspace:
    """The nullspace of the patch embedding at relative tolerance ``rtol`` (default: float32 rounding)."""
    spec = cached_spectrum(lm_or_model) if isinstance(lm_or_model, LoadedModel) else patch_embed_spectrum(lm_or_model)
    if rtol is None:
        rtol = spec.default_rtol()
    check("rtol", "nullspace", rtol, Interval(float, 0.0, 1.0, closed="left"))
    s = spec.singular_values
    rank = int((s > rtol * s[0]).sum()) if s.numel() and float(s[0]) > 0 else 0
    if not isinstance(lm_or_model, LoadedModel):
        return Nullspace(spectrum=spec, rtol=float(rtol), rank=rank)
    # one Nullspace per (frozen model, rtol): its lazily computed bases are then computed once
    per_rtol = lm_or_model.derived.get("nullspaces", dict)
    return per_rtol.setdefault(float(rtol), Nullspace(spectrum=spec, rtol=float(rtol), rank=rank))


# --------------------------------------------------------------------------------------------- sampling


#: A full-rank model's stand-in for nullspace noise: its this many weakest singular directions (every page, the
#: command line and the benches draw it the same way through NoiseSpec's default).
FULL_RANK_WEAKEST = 8


@dataclass(frozen=True)
class NoiseSpec:
    """How to draw exact nullspace noise: magnitude in normalised units, per-patch L2 or image L∞."""

    magnitude: float = 1.0
    norm: str = "l2_patch"
    shared: bool = False  # one pattern for every patch instead of an independent draw per patch
    seed: int = 0
    # with nullity 0 (a full-rank patch embedding): draw from the k weakest directions instead ("approximately
    # null"); None: the app's one policy, FULL_RANK_WEAKEST of them (0: no noise at all for a full-rank model)
    weakest: int | None = None

    def __post_init__(self):
        check("magnitude", "NoiseSpec", self.magnitude, Interval(float, 0.0, None, closed="left"))
        check("norm", "NoiseSpec", self.norm, Options(("l2_patch", "linf")))
        check("seed", "NoiseSpec", self.seed, Interval(int, 0, None))
        if self.weakest is not None:
            check("weakest", "NoiseSpec", self.weakest, Interval(int, 0, None))


def sample_noise(ns: Nullspace, image_size: tuple[int, int], spec: NoiseSpec = NoiseSpec()) -> torch.Tensor:
    """A random image-shaped perturbation [C, H, W] (float32) whose every patch lies in N_θ.

    Each patch gets an independent Gaussian combination of the basis vectors (isotropic in N_θ), or one
    shared combination, then the whole is scaled to ``spec.magnitude``.
    """
    H, W = image_size
    p = ns.patch_size
    if H % p or W % p:
        raise InvalidParameterError("image_size", "sample_noise", f"a multiple of the patch size {p}",
                                    image_size)
    n_patches = (H // p) * (W // p)
    if ns.nullity > 0:
        directions = ns.basis
    elif (FULL_RANK_WEAKEST if spec.weakest is None else spec.weakest) > 0:
        directions, _ = ns.weakest_directions(FULL_RANK_WEAKEST if spec.weakest is None else spec.weakest)
    else:
        return torch.zeros(ns.spectrum.in_chans, H, W)
    gen = torch.Generator().manual_seed(spec.seed)
    rows = 1 if spec.shared else n_patches
    coeffs = torch.randn(rows, directions.shape[1], generator=gen, dtype=torch.float64)
    patches = (coeffs @ directions.T).expand(n_patches, -1)
    if spec.norm == "l2_patch":
        patches = patches / patches.norm(dim=1, keepdim=True).clamp_min(1e-300) * spec.magnitude
    v = unpatchify(patches.unsqueeze(0).contiguous(), p, (H, W))[0]
    if spec.norm == "linf":
        v = v / v.abs().max().clamp_min(1e-300) * spec.magnitude
    return v.to(torch.float32)


def to_pixels(lm: LoadedModel, v: torch.Tensor) -> torch.Tensor:
    """A perturbation in normalised space → the same perturbation in [0, 1] pixel units (× std)."""
    return v * lm.std.to(v)


# ------------------------------------------------------------------------------------------ feasibility
@dataclass
class FeasibleNoise:
    """Exact null noise v with x + v inside the valid pixel box, and how much of the original it kept."""

    noise: torch.Tensor
    patch_scales: torch.Tensor  # final line-search factor t_j ∈ [0, 1] of each patch
    kept_norm_fraction: float  # ‖v_feasible‖ / ‖v_start‖
    max_box_violation: float  # in normalised units; 0 up to rounding
    iterations: int


def feasible_noise(lm: LoadedModel, ns: Nullspace, x: torch.Tensor, v: torch.Tensor,
                   iterations: int = 100) -> FeasibleNoise:
    """Find null noise close to ``v`` such that x + v stays a valid image (pixels in [0, 1]).

    Dykstra's alternating projections between the subspace N_θ (patch-wise) and the box B − x approach
    the point of the intersection nearest to ``v``; a final line search t_j·v_j per patch (t_j ≤ 1; exact
    since 0 is feasible and N_θ is a subspace) makes the result exactly null and inside the box (up to a
    1e-7 rounding slack, reported as ``max_box_violation``).
    """
    check("iterations", "feasible_noise", iterations, Interval(int, 0, 10_000))
    x = x[0] if x.dim() == 4 else x
    x = x.detach().cpu().to(torch.float64)
    start = v.detach().cpu().to(torch.float64)
    mean, std = lm.mean.to(x), lm.std.to(x)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    x = torch.maximum(torch.minimum(x, hi), lo)
    lo_v, hi_v = lo - x, hi - x
    cur, p_inc, q_inc = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    for _ in range(iterations):
        y = torch.maximum(torch.minimum(cur + p_inc, hi_v), lo_v)
        p_inc = cur + p_inc - y
        cur_new = ns.project_image(y + q_inc)
        q_inc = y + q_inc - cur_new
        cur = cur_new
    cur = ns.project_image(cur)
    scales = _max_feasible_patch_scales(cur, lo_v, hi_v, ns.patch_size)
    out = unpatchify(patchify(cur.unsqueeze(0), ns.patch_size) * scales[None, :, None], ns.patch_size,
                     cur.shape[-2:])[0]
    violation = float(torch.clamp(out - hi_v, min=0).max().item() + torch.clamp(lo_v - out, min=0).max().item())
    kept = float(out.norm() / start.norm()) if float(start.norm()) > 0 else 0.0
    return FeasibleNoise(noise=out.to(torch.float32), patch_scales=scales.to(torch.float32), kept_norm_fraction=kept,
                         max_box_violation=violation, iterations=iterations)


def _max_feasible_patch_scales(v: torch.Tensor, lo_v: torch.Tensor, hi_v: torch.Tensor, patch_size: int,
                               slack: float = 1e-7) -> torch.Tensor:
    """Largest t_j ∈ [0, 1] per patch j with lo_v − slack ≤ t_j·v ≤ hi_v + slack (lo_v ≤ 0 ≤ hi_v).

    Scaling each patch separately keeps it in N_θ (a subspace) and lets patches far from the box's walls
    keep their full noise, while patches of saturated pixels (black digit background) are scaled down.
    The slack (normalised units, far below one 8-bit level) absorbs float rounding of the projections.
    """
    ratios = torch.full_like(v, float("inf"))
    hi, lo = (hi_v + slack).expand_as(v), (lo_v - slack).expand_as(v)
    pos, neg = v > 0, v < 0
    ratios[pos] = hi[pos] / v[pos]
    ratios[neg] = lo[neg] / v[neg]
    per_patch = patchify(ratios.unsqueeze(0), patch_size)[0].amin(dim=1)
    return per_patch.clamp(0, 1)


# ----------------------------------------------------------------------------------------- verification
@dataclass
class InvarianceReport:
    """What adding v did: to the patch tokens, to the logits, and after saving as an 8-bit image."""

    token_max_abs_change: float
    token_rel_change: float
    max_abs_logit_change: float
    rel_logit_change: float
    top1_clean: int
    top1_noised: int
    residual_ratio: float  # ‖W v‖ / (σ_max ‖v‖): the noise's own certificate
    noise_l2: float
    noise_linf: float
    noise_linf_pixels: float
    quantized_rel_logit_change: float  # logits of clip+8-bit(x + v) vs logits of x
    quantized_top1: int
    quantized_baseline_rel_logit_change: float  # logits of 8-bit(x) vs x: what quantising alone does
    clipped_fraction: float  # fraction of pixel values of x + v outside [0, 1] (by more than 1e-6)
    probs_clean: list[float] = field(default_factory=list, repr=False)
    probs_noised: list[float] = field(default_factory=list, repr=False)

    @property
    def top1_unchanged(self) -> bool:
        return self.top1_clean == self.top1_noised

    @property
    def quantized_top1_unchanged(self) -> bool:
        return self.top1_clean == self.quantized_top1

    @property
    def within_rounding(self) -> bool:
        """Tokens and logits unchanged up to float32 rounding (relative changes ≤ FLOAT32_NEGLIGIBLE)."""
        return is_rounding(self.token_rel_change) and is_rounding(self.rel_logit_change)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("probs")}
        d["top1_unchanged"] = self.top1_unchanged
        d["quantized_top1_unchanged"] = self.quantized_top1_unchanged
        return d


def describe_invariance(reports: Mapping[str, InvarianceReport]) -> str:
    """One sentence on what adding the noise did, computed from the reports it is about (label → report):
    'agree to float32 rounding' only when every relative change is rounding, else the changes themselves."""
    worst_tokens = max(r.token_rel_change for r in reports.values())
    worst_logits = max(r.rel_logit_change for r in reports.values())
    if all(r.within_rounding for r in reports.values()):
        return (f"The image changes visibly; tokens and logits agree to float32 rounding (relative changes at "
                f"most {max(worst_tokens, worst_logits):.0e}; float32 rounding is up to {FLOAT32_NEGLIGIBLE:.0e}).")
    changed = "; ".join(f"{label}: tokens {r.token_rel_change:.1e}, logits {r.rel_logit_change:.1e} relative"
                        + ("" if r.top1_unchanged else ", prediction changed") for label, r in reports.items())
    return (f"Not invisible: {changed} — above float32 rounding ({FLOAT32_NEGLIGIBLE:.0e}), so the model sees "
            f"this noise.")


def quantize_8bit(lm: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """What saving x as an 8-bit PNG and reloading does: clip to [0, 1] pixels, round to 1/255."""
    pixels = lm.denormalize(x).clamp(0, 1)
    return lm.normalize(torch.round(pixels * 255) / 255)


@torch.no_grad()
def verify_invariance(lm: LoadedModel, x: torch.Tensor, v: torch.Tensor,
                      ns: Nullspace | None = None) -> InvarianceReport:
    """Compare x and x + v (normalised; x is [C, H, W] or [1, C, H, W]) through tokens, logits and 8-bit."""
    x = (x if x.dim() == 4 else x.unsqueeze(0)).to(lm.device, torch.float32)
    v = (v if v.dim() == 4 else v.unsqueeze(0)).to(lm.device, torch.float32)
    if x.shape != v.shape:
        raise InvalidParameterError("v", "verify_invariance", f"a tensor shaped like the image {tuple(x.shape)}",
                                    tuple(v.shape))
    batch = torch.cat([x, x + v, quantize_8bit(lm, x + v), quantize_8bit(lm, x)])
    tokens = patch_tokens(lm.model, batch)
    logits = logits_from_patch_tokens(lm.model, tokens, token_grid(lm.model, batch)).float()
    t0, t1 = tokens[0], tokens[1]
    l0, l1, lq, lb = logits
    rel = lambda a, b: float((a - b).norm() / b.norm().clamp_min(1e-30))  # noqa: E731
    pixels = lm.denormalize(x + v)
    ns = ns or nullspace(lm)
    return InvarianceReport(
        token_max_abs_change=float((t1 - t0).abs().max()),
        token_rel_change=rel(t1, t0),
        max_abs_logit_change=float((l1 - l0).abs().max()),
        rel_logit_change=rel(l1, l0),
        top1_clean=int(l0.argmax()), top1_noised=int(l1.argmax()),
        residual_ratio=ns.residual_ratio(v[0]),
        noise_l2=float(v.norm()), noise_linf=float(v.abs().max()),
        noise_linf_pixels=float(to_pixels(lm, v[0]).abs().max()),
        quantized_rel_logit_change=rel(lq, l0), quantized_top1=int(lq.argmax()),
        quantized_baseline_rel_logit_change=rel(lb, l0),
        clipped_fraction=float(((pixels < -1e-6) | (pixels > 1 + 1e-6)).float().mean()),
        probs_clean=l0.softmax(-1).cpu().tolist(), probs_noised=l1.softmax(-1).cpu().tolist(),
    )


def per_patch_norms(v: torch.Tensor, patch_size: int) -> np.ndarray:
    """L2 norm of the noise in each patch, as a grid [H/p, W/p] (for the heat map)."""
    v = v if v.dim() == 4 else v.unsqueeze(0)
    norms = patchify(v.float().cpu(), patch_size)[0].norm(dim=1)
    return norms.reshape(v.shape[-2] // patch_size, v.shape[-1] // patch_size).numpy()


@torch.no_grad()
def decompose_random_noise(lm: LoadedModel, ns: Nullspace, x: torch.Tensor, magnitude: float = 1.0,
                           seed: int = 0) -> dict[str, dict[str, float]]:
    """Split Gaussian noise g into its nullspace part P g and its visible part (I − P) g, and report what
    each does to the logits: the visible part carries the whole change, the null part none of it."""
    x = x if x.dim() == 4 else x.unsqueeze(0)
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(x.shape[1:], generator=gen)
    g = g / g.norm() * magnitude * (x.shape[-1] * x.shape[-2] / ns.patch_size ** 2) ** 0.5
    parts = {"random": g, "null part": ns.project_image(g.double()).float(),
             "visible part": ns.project_image(g.double(), onto=False).float()}
    out = {}
    for name, v in parts.items():
        r = verify_invariance(lm, x, v, ns)
        out[name] = {"noise_l2": r.noise_l2, "rel_logit_change": r.rel_logit_change,
                     "top1_unchanged": r.top1_unchanged}
    return out


# ------------------------------------------------------------------------------------- teaching helpers
@dataclass
class MatrixNullspace:
    """Rank, nullity and an orthonormal nullspace basis of a small matrix A (the Learn page's 2×3 example)."""

    matrix: np.ndarray
    singular_values: np.ndarray
    rank: int
    basis: np.ndarray  # [n, nullity]

    @property
    def nullity(self) -> int:
        return self.basis.shape[1]


def matrix_nullspace(A: np.ndarray, rtol: float = 1e-10) -> MatrixNullspace:
    """Nullspace of any m×n matrix via its SVD (rank–nullity: rank + nullity = n)."""
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.size == 0 or not np.isfinite(A).all():
        raise InvalidParameterError("A", "matrix_nullspace", "a finite, non-empty 2-D matrix", A.shape)
    _, s, vh = np.linalg.svd(A, full_matrices=True)
    rank = int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0
    return MatrixNullspace(matrix=A, singular_values=s, rank=rank, basis=vh[rank:].T.copy())


def dirichlet_energy(vectors: torch.Tensor, in_chans: int, patch_size: int) -> torch.Tensor:
    """Σ of squared differences between neighbouring pixels of each column of ``vectors`` [K, n] seen as a
    c × p × p patch: small for smooth patterns, large for pixel noise."""
    v = vectors.T.reshape(-1, in_chans, patch_size, patch_size)
    return (v.diff(dim=-1) ** 2).sum((1, 2, 3)) + (v.diff(dim=-2) ** 2).sum((1, 2, 3))


def smooth_null_directions(ns: Nullspace, count: int = 8) -> torch.Tensor:
    """An orthonormal set of ``count`` null directions ordered from the smoothest (lowest Dirichlet energy):
    eigenvectors of Bᵀ L B for a basis B of N_θ and the patch's grid Laplacian L. Any orthonormal basis spans
    N_θ equally well; this one shows a person the *patterns* the patch embedding cannot see."""
    if ns.nullity == 0:
        return ns.weakest_directions(count)[0]
    if ns._smooth is None:
        B = ns.basis
        c, p = ns.spectrum.in_chans, ns.patch_size
        # Bᵀ L B = (D B)ᵀ (D B) with D the neighbour-difference operator (E(x) = ‖D x‖²)
        cols = B.T.reshape(-1, c, p, p)
        DB = torch.cat([cols.diff(dim=-1).flatten(1), cols.diff(dim=-2).flatten(1)], dim=1)  # [nullity, edges]
        _, evecs = torch.linalg.eigh(DB @ DB.T)
        ns._smooth = B @ evecs
    return ns._smooth[:, :count]


def basis_patch_images(ns: Nullspace, count: int = 8) -> np.ndarray:
    """The ``count`` smoothest null directions as p×p RGB patches in [0, 1] (0 ↦ grey): [count, p, p, 3]."""
    p, c = ns.patch_size, ns.spectrum.in_chans
    vecs = smooth_null_directions(ns, count).T.reshape(-1, c, p, p).float()
    peak = vecs.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (0.5 + 0.5 * vecs / peak).permute(0, 2, 3, 1).numpy()


def basis_vector_noise(ns: Nullspace, image_size: tuple[int, int], index: int = 0, patch: int | None = None,
                       magnitude: float = 1.0) -> torch.Tensor:
    """Null direction ``index`` of :func:`smooth_null_directions` (× magnitude) placed in one patch
    (``patch``) or in every patch (None): [C, H, W]."""
    H, W = image_size
    p = ns.patch_size
    n_patches = (H // p) * (W // p)
    basis = smooth_null_directions(ns, max(ns.nullity, 1) if ns.nullity else index + 1)
    if not 0 <= index < basis.shape[1]:
        raise InvalidParameterError("index", "basis_vector_noise", f"an int in [0, {basis.shape[1] - 1}]", index)
    if patch is not None and not 0 <= patch < n_patches:
        raise InvalidParameterError("patch", "basis_vector_noise", f"an int in [0, {n_patches - 1}]", patch)
    patches = torch.zeros(1, n_patches, ns.input_dim, dtype=torch.float64)
    vec = basis[:, index] * magnitude
    if patch is None:
        patches[0] = vec
    else:
        patches[0, patch] = vec
    return unpatchify(patches, p, (H, W))[0].float()
