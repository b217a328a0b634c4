"""Named finetuning recipes, as plain data (the command line reads them without importing torch).

"paper" is the recipe of Liu et al. 2024 (§4; ../shared/PAPER.md §3): AdamW lr 1e-4, weight decay 1e-4,
cosine over all steps with no warm-up, 10 epochs, random resized crop + flip, the best held-out epoch kept (the
held-out split: a seeded 10 % of the training folder — a validation split; benchmarks judge the kept model on
other images), δ kept inside ε = 0.03 (the paper's ablation value). AdamW and the cosine schedule are what every
run uses. Everything else (batch size, δ steps, λ) stays the config's default; every value can be overridden.
"""

FINETUNE_PRESETS: dict[str, dict[str, object]] = {
    "paper": {"epochs": 10, "lr": 1e-4, "weight_decay": 1e-4, "warmup_steps": 0, "augment": "rrc_flip",
              "keep_best": True, "synth_tol": 0.03},
}
