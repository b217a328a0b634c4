"""Noise a ViT cannot see: ``exact`` (the patch embedding's nullspace: noise that changes nothing),
``layernorm`` (the directions every LayerNorm removes: exact too, one per token or patch), ``approximate`` (δ
optimised so the encoder barely reacts, its controls and the frontier), ``kinds`` (the one registry of noise
kinds and their random controls) and ``files`` (the one noise file format every δ is saved and read in)."""
