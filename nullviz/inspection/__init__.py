"""Looking inside a ViT, clean vs. noised: ``tracing`` (one forward pass recording attention and tokens, on a
private view of the shared model), ``attention`` (maps, rollout, statistics, comparisons), ``attribution``
(captum methods, one registry) and ``localization`` (does attention fall on the object?)."""
