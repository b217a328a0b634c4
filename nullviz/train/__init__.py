"""Nullspace-augmented finetuning and its controls, cut along timm's ``train.py`` seams: ``config`` (one run's
settings, the evaluation and cost policies), ``methods`` (one object per method: its loss and whether it needs δ),
``loop`` (optimizer, schedule, one optimizer step, the run's state, ``train_one_epoch``), ``deltas`` (which images
each δ is fit and selected on), ``evaluator`` (held-out accuracy with one yardstick), ``checkpoint`` (the saver:
run folders written atomically, resumed), ``logger``, ``loader``, ``distributed`` (torchrun / DDP); ``finetune``
assembles them into a stoppable, resumable run; ``comparison`` compares methods over seeds (paired intervals with
the correction stated)."""
