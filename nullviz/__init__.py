"""nullviz: the nullspace of Vision Transformers, as a library (the app and the command line sit on top).

Subpackages by layer, each importing only from the layers below it (checked by ``lint-imports`` in CI):

- ``cli`` — ``nullviz`` / ``python -m nullviz``, the command line over everything below;
- ``jobs`` — long work in processes of their own (queue, workers, progress files);
- ``train`` — nullspace-augmented finetuning, its controls (one object per method), DDP, run checkpoints;
- ``robustness`` — attacks (one registry), corruptions, the evaluation suite and its report;
- ``inspection`` — tracing, attention, attribution (one registry), localization;
- ``noise`` (exact and approximate nullspace noise, the noise file) · ``data`` (digits, scenes, images, data
  sets by spec) · ``server`` (settings, workspaces, process tuning);
- ``models`` — the embedded models, loading, the shared read-only model and its views, token-level forward;
- ``figures`` (plotly builders) · ``core`` (errors, validated parameters, seeded streams, atomic files).
"""

__version__ = "0.1.0"
