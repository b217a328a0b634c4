"""Nullspace-augmented finetuning and its controls: ``finetune`` (config, run, evaluation with one
yardstick), ``methods`` (one object per method: its loss and whether it needs δ), ``loader``, ``distributed``
(torchrun / DDP), ``checkpoint`` (run folders written atomically, resumed) and ``comparison`` (methods over
seeds: paired intervals with the correction stated)."""
