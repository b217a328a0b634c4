"""One finetuning run's settings (:class:`FinetuneConfig`) and the fixed policies every run shares: the
evaluation's yardstick (``EVAL_SYNTHESIS``, the Gaussian grid) and what each kind of work costs, so the progress
bar and the ETA count δ synthesis and evaluation as well as training steps."""

from __future__ import annotations

from dataclasses import dataclass

from nullviz.core.errors import InvalidParameterError
from nullviz.core.params import Interval, Options, bounded, check, validate_fields
from nullviz.core.presets import FINETUNE_PRESETS
from nullviz.core.seeds import MAX_SEED
from nullviz.noise.approximate import DEFAULT_LAM, DEFAULT_LIM, DEFAULT_LR, DEFAULT_STEPS, SynthesisConfig

from .methods import FINETUNE_METHODS


METHODS = tuple(FINETUNE_METHODS)
#: One yardstick for every run compared. Evaluation δs use these settings whatever a run trained with (a run's
#: own λ gave its "under δ" figure larger, more visible δs), are fit on EVAL_FIT_FRACTION of the training
#: images and kept as the largest δ inside ε on EVAL_VALIDATION_IMAGES other training images: that δ's norm is
#: the model's *nullspace size*. All drawn from the run's seed alone, so runs that differ only in training
#: settings draw the same images.
#: Steps of 16 images, a look at the validation images every 25 steps: at equal cost they make δs as large inside
#: ε as steps of 64 (cluttered model, 3 seeds: 16 × 200 steps, mean ‖δ‖ 102 in 9.2 s; 64 × 100, 99 in 16.5 s).
EVAL_SYNTHESIS = dict(level="encoder", lim=DEFAULT_LIM, lr=DEFAULT_LR, lam=DEFAULT_LAM, tol=0.01, batch_size=16,
                      check_every=25)
EVAL_FIT_FRACTION = 0.1
EVAL_VALIDATION_IMAGES = 128
#: Gaussian controls at fixed norms: these multiples of the *starting* model's mean patch-token norm (on the
#: validation draw), the same noise for every run from that start (it was each model's own δ norm, so a model
#: whose approximate nullspace grew was tested with larger noise).
GAUSSIAN_GRID = (0.25, 0.5, 1.0)
TOKEN_NOISE_METHODS = tuple(name for name, m in FINETUNE_METHODS.items() if m.uses_delta)
#: Token-noise methods whose noise is a control of δ's norm (not δ itself): they may be given the norms.
CONTROL_METHODS = tuple(name for name, m in FINETUNE_METHODS.items() if m.uses_delta and m.is_control)
FREEZE = ("none", "patch_embed", "all_but_head")
#: Training augmentation (natural images only; the embedded digits and scenes keep their fixed tensors):
#: "rrc_flip" — random resized crop (scale 0.08–1) and horizontal flip, the paper's; "timm" — timm's default
#: training transform (the same plus colour jitter 0.4).
AUGMENTATIONS = ("none", "rrc_flip", "timm")
#: What each epoch's evaluation measures: "all" (see ``Evaluator.evaluate``) or "clean" — held-out clean accuracy
#: alone, what the best-epoch rule reads, for a comparison that measures every kept model on its own test images
#: afterwards (``scripts/paper_table.py``: the other per-epoch numbers were a quarter of its time, unread).
EPOCH_MEASURES = ("all", "clean")


#: What each kind of work costs, in *batch passes* (a forward+backward of ``batch_size`` images into every
#: weight): the progress bar and the ETA count all of a run's work in these units, so δ synthesis and
#: evaluation move them as much as they take. Measured on the cluttered model, CPU, batch 64, 2 threads
#: (0.285 s a batch pass): a training step is 1 pass (baseline), 2 (clean + noised: the noise methods) or
#: 2.5 (adversarial: the attack, then clean + adversarial); a δ step (one batch forward+backward to δ alone)
#: 0.55; one image through one evaluation forward 0.225 / batch (0.93–1.0 ms).
TRAIN_STEP_COST = {name: m.step_cost for name, m in FINETUNE_METHODS.items()}
SYNTHESIS_STEP_COST = 0.55
EVAL_PASS_COST_PER_IMAGE = 0.225
PHASES = ("synthesizing δ", "training", "evaluating")


@dataclass(frozen=True)
class FinetuneConfig:
    """One run's settings. Defaults: the research code's optimiser (AdamW, lr 1e-4, wd 1e-4, cosine); δ is
    synthesized at the frontier defaults of :class:`~nullviz.noise.approximate.SynthesisConfig` (lim 1, λ 0.5,
    200 steps, ε 0.01) on 10 % of the training images; the research code's lim 3, λ 0 stops while δ is
    still its random start."""

    method: str = bounded("nullspace", Options(METHODS))
    epochs: int = bounded(3, Interval(int, 1, 10_000))
    steps_per_epoch: int | None = None  # None: one full pass over the training set
    batch_size: int = bounded(64, Interval(int, 1, 65_536))
    lr: float = bounded(1e-4, Interval(float, 0.0, 1.0, closed="right"))
    weight_decay: float = bounded(1e-4, Interval(float, 0.0, 1.0))
    warmup_steps: int = bounded(0, Interval(int, 0, None))
    freeze: str = bounded("none", Options(FREEZE))
    noise_every: int | None = None  # resynthesize δ every K steps (None: once per epoch)
    # the controls' (gaussian, random_start) noise norm for each δ period instead of their own δ's, the last one
    # repeated — e.g. the same seed's nullspace run's δ norms, so a control trains on exactly the noise size the
    # paper's method did (a δ synthesized on the control's own model differs); a control given norms
    # synthesizes no δ at all
    noise_norms: tuple[float, ...] | None = None
    synth_fraction: float = bounded(0.1, Interval(float, 0.0, 1.0, closed="right"))
    synth_steps: int = bounded(DEFAULT_STEPS, Interval(int, 1, 100_000))
    synth_batch_size: int = bounded(64, Interval(int, 1, 65_536))  # images per δ step of the training δs
    synth_lim: float = bounded(DEFAULT_LIM, Interval(float, 0.0, None, closed="neither"))
    synth_lr: float = bounded(DEFAULT_LR, Interval(float, 0.0, None, closed="neither"))
    synth_tol: float = bounded(0.01, Interval(float, 0.0, None, closed="neither"))
    synth_lam: float = bounded(DEFAULT_LAM, Interval(float, 0.0, None))
    fgsm_eps: float = bounded(8 / 255, Interval(float, 0.0, 1.0))
    eval_limit: int | None = None
    fresh_deltas: int = bounded(2, Interval(int, 0, 16))  # δs synthesized on the evaluated model
    fresh_every_epoch: bool = False  # fresh δs at every epoch's evaluation (slower), else after the last one
    amp: bool = True  # bf16 autocast, CUDA only
    grad_accum: int = bounded(1, Interval(int, 1, 1024))  # micro-batches of batch_size per optimizer step
    workers: int = bounded(0, Interval(int, 0, 64))  # DataLoader worker processes (0: read in this process)
    compile: bool = False  # torch.compile the training forward
    # the evaluation δs' synthesis steps: an evaluation setting, the same for every run compared (a run's own
    # synth_* settings only shape the δ it trains on)
    eval_synth_steps: int = bounded(DEFAULT_STEPS, Interval(int, 1, 100_000))
    # a new classifier head when the data's classes are not the model's: said explicitly, so a 1,000-class
    # ImageNet ViT is never quietly retrained as a 10-digit classifier
    new_head: bool = False
    augment: str = bounded("none", Options(AUGMENTATIONS))
    # keep the weights of the epoch with the best held-out clean accuracy (the held-out split is a validation
    # split of the training data: the benchmarks judge the kept model on other images)
    keep_best: bool = False
    epoch_measures: str = bounded("all", Options(EPOCH_MEASURES))
    seed: int = bounded(0, Interval(int, 0, MAX_SEED))

    def __post_init__(self):
        validate_fields(self)
        if isinstance(self.noise_norms, list):  # read back from JSON (a job's parameters, a run's sidecar)
            object.__setattr__(self, "noise_norms", tuple(self.noise_norms))
        if self.noise_norms is not None:
            norms = self.noise_norms
            if (not isinstance(norms, tuple) or not norms
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in norms)):
                raise InvalidParameterError("noise_norms", "FinetuneConfig", "None or a tuple of norms > 0", norms)
            if self.method not in CONTROL_METHODS:
                raise InvalidParameterError("noise_norms", "FinetuneConfig",
                                            f"None for method {self.method!r} (norms are for {', '.join(CONTROL_METHODS)})",
                                            norms)
        for name in ("steps_per_epoch", "noise_every", "eval_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidParameterError(name, "FinetuneConfig", "None or an int ≥ 1", value)

    def work_plan(self, steps_per_epoch: int, eval_images: int, start_delta: bool = True) -> dict[str, float]:
        """The run's work by phase, in batch passes (see TRAIN_STEP_COST): what the progress bar counts.
        ``start_delta=False``: the starting model's δ comes from another run of the job (``Evaluator.references``)."""
        deltas = 0
        clean_only = self.epoch_measures == "clean"
        if self.method in TOKEN_NOISE_METHODS and self.noise_norms is None:
            per_epoch = 1 + ((steps_per_epoch - 1) // self.noise_every if self.noise_every else 0)
            deltas = self.epochs * per_epoch
        fresh_epochs = self.epochs if self.fresh_every_epoch else 1
        fresh = 0 if clean_only else self.fresh_deltas * fresh_epochs + int(start_delta)  # + the start's δ, once
        n = eval_images if self.eval_limit is None else min(self.eval_limit, eval_images)
        passes = 1 if clean_only else self.eval_passes(fresh=self.fresh_deltas)
        return {"synthesizing δ": (deltas * self.synth_steps + fresh * self.eval_synth_steps) * SYNTHESIS_STEP_COST,
                "training": self.epochs * steps_per_epoch * TRAIN_STEP_COST[self.method],
                "evaluating": self.epochs * n * passes * EVAL_PASS_COST_PER_IMAGE / self.batch_size}

    def eval_passes(self, fresh: int) -> int:
        """Forward passes per held-out image in one evaluation: clean, each fresh δ, the starting model's δ,
        the Gaussian grid, the training δ, FGSM (attack and prediction: three)."""
        noise = self.method in TOKEN_NOISE_METHODS
        return 1 + fresh + 1 + len(GAUSSIAN_GRID) + (1 if noise else 0) + 3

    def synthesis(self, seed: int) -> SynthesisConfig:
        """The δ this run trains on (its own settings)."""
        return SynthesisConfig(level="encoder", lim=self.synth_lim, lr=self.synth_lr, lam=self.synth_lam,
                               tol=self.synth_tol, steps=self.synth_steps, batch_size=self.synth_batch_size, seed=seed)

    def evaluation_synthesis(self, seed: int) -> SynthesisConfig:
        """The δs every evaluation measures with: fixed settings, whatever the run trained with."""
        return SynthesisConfig(**EVAL_SYNTHESIS, steps=self.eval_synth_steps, seed=seed)


def preset_config(name: str, **overrides) -> FinetuneConfig:
    """A FinetuneConfig from a named preset (:data:`nullviz.core.presets.FINETUNE_PRESETS`; "paper": the paper's
    recipe), any field overridden."""
    check("preset", "preset_config", name, Options(tuple(FINETUNE_PRESETS)))
    return FinetuneConfig(**{**FINETUNE_PRESETS[name], **overrides})
