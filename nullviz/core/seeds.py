"""Disjoint random streams for training and evaluation.

A finetuning run draws random numbers for several purposes: the data order, the δ it trains on, the Gaussian
noise the Gaussian control trains on, the fresh δs and the Gaussian noise it is *evaluated* with. Seeds made by
arithmetic such as ``seed * 7919 + period`` and ``seed + 17`` collide (period 17 of seed 0 was the evaluation
noise). Here every seed is a bit layout of (stream, seed, index), so two streams never share a seed, by
construction.

The layout fits 32 bits because torch's CPU generator (mt19937) keeps only the low 32 bits of a seed: seeds
that differ above bit 31 give identical draws. Stream: 3 bits; the run's seed: 13 bits (0 … 8191); the index
(epoch, period, synthesis, draw): 16 bits, taken modulo 65,536, so a stream repeats itself after 65,536 draws
but never meets another stream.
"""

from __future__ import annotations

from .params import Interval, Options, check


STREAMS = ("data_order", "head_init", "train_delta", "train_gaussian", "fresh_delta", "eval_gaussian", "start_delta")
STREAM_BITS, SEED_BITS, INDEX_BITS = 3, 13, 16
MAX_SEED = 2 ** SEED_BITS - 1
INDEX_PERIOD = 2 ** INDEX_BITS


def stream_seed(stream: str, seed: int, index: int = 0) -> int:
    """The 32-bit seed of draw ``index`` of ``stream`` for a run seeded ``seed`` (0 … 8191)."""
    check("stream", "stream_seed", stream, Options(STREAMS))
    check("seed", "stream_seed", seed, Interval(int, 0, MAX_SEED))
    check("index", "stream_seed", index, Interval(int, 0, None))
    return (STREAMS.index(stream) << (SEED_BITS + INDEX_BITS)) | (seed << INDEX_BITS) | (index % INDEX_PERIOD)
