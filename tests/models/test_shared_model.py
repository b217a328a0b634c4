"""One LoadedModel shared by many threads (the app's cached model under several sessions).

Every public operation that touches a model runs concurrently from several threads, mixed and with
different batch sizes; each result must equal the result of the same call made alone, and the shared
model's state (modes, fused-attention flags, hooks, requires_grad, weights and their version counters)
must be exactly as before.
"""

import threading

import numpy as np
import pytest
import torch

from nullviz.inspection.attention import compare, trace
from nullviz.inspection.attribution import attribute
from nullviz.models import PixelModel, shared_weights_view
from nullviz.noise import exact as N
from nullviz.noise.approximate import SynthesisConfig, noise_effect, synthesize
from nullviz.inspection.faithfulness import road
from nullviz.robustness.attacks import CW, AutoAttack, fgsm, patchfool, pgd
from nullviz.robustness.evaluation import EvalConfig, corrupt, evaluate

from conftest import assert_state_equal, state_snapshot


def model_state(model: torch.nn.Module) -> dict:
    """Everything a request could switch on a module tree, apart from the weights' values."""
    out = {}
    for name, m in model.named_modules():
        out[name] = (m.training, getattr(m, "fused_attn", None), len(m._forward_hooks), len(m._forward_pre_hooks),
                     len(m._backward_hooks), len(getattr(m, "_backward_pre_hooks", {})))
    for name, p in model.named_parameters():
        out["param:" + name] = (p.requires_grad, p._version, p.grad is None)
    for name, b in model.named_buffers():
        out["buffer:" + name] = b._version
    return out


def _operations(lm):
    """name → zero-argument call returning tensors (or floats), each a different kind of request."""
    gen = torch.Generator().manual_seed(0)
    dev = lm.device
    x1 = torch.randn(1, 3, *lm.img_size, generator=gen).to(dev)
    x5 = torch.randn(5, 3, *lm.img_size, generator=gen).to(dev)
    pixels = torch.rand(4, 3, *lm.img_size, generator=gen).to(dev)
    labels = torch.tensor([0, 1, 2, 3], device=dev)
    ns = N.nullspace(lm)
    v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(seed=3))
    delta = (torch.randn(lm.grid_size[0] * lm.grid_size[1], lm.embed_dim, generator=gen) * 0.1).to(dev)
    fn = PixelModel.of(lm)
    dataset = [(pixels[i], int(labels[i])) for i in range(4)]

    def cmp_exact():
        c = compare(lm, x1, v, "input")
        return torch.cat([c.clean.attention.flatten(), c.noised.hidden.flatten(), c.layer_repr_change])

    return {
        "trace_b1": lambda: trace(lm.model, x1).attention,
        "trace_b5": lambda: trace(lm.model, x5).hidden,
        "trace_token_noise": lambda: trace(lm.model, x5, token_noise=delta).logits,
        "compare_exact": cmp_exact,
        "predict_b5": lambda: lm.predict(x5),
        "verify_exact": lambda: torch.tensor(N.verify_invariance(lm, x1, v, ns).rel_logit_change),
        "synthesize_encoder": lambda: synthesize(lm, x5, SynthesisConfig(level="encoder", steps=4, tol=1e-9,
                                                                         seed=1)).delta,
        "synthesize_input": lambda: synthesize(lm, x5, SynthesisConfig(level="input", steps=3, tol=1e-9,
                                                                       seed=2)).delta,
        "noise_effect": lambda: torch.tensor(noise_effect(lm, x1, delta, "encoder").probs_noised),
        "ig": lambda: attribute(lm, pixels[:1], "integrated_gradients", steps=8).attributions,
        "smoothgrad": lambda: attribute(lm, pixels[:2], "smoothgrad", smoothgrad_samples=4, seed=5).attributions,
        "occlusion": lambda: attribute(lm, pixels[:1], "occlusion").attributions,
        # class-specific maps: Chefer's relevance (hooks) and pytorch-grad-cam's CAMs, each on a private view
        "relevance": lambda: attribute(lm, pixels[:2], "attention_relevance").attributions,
        "gradcam": lambda: attribute(lm, pixels[:2], "gradcam").attributions,
        "eigencam": lambda: attribute(lm, pixels[:1], "eigencam").attributions,
        "layercam": lambda: attribute(lm, pixels[:1], "layercam").attributions,
        "cw": lambda: CW(steps=2)(fn, pixels, labels, seed=3),
        # torchattacks and ROAD draw from torch's global generator: seeded, forked and locked, so the same
        # result whatever runs beside them
        "autoattack": lambda: AutoAttack(eps=8 / 255)(fn, pixels[:2], labels[:2], seed=3),
        "road": lambda: torch.tensor(road(fn, pixels[:1], torch.rand(*pixels.shape[-2:], generator=torch.Generator()
                                                                      .manual_seed(0)), int(labels[0]), seed=2)),
        "fgsm": lambda: fgsm(fn, pixels, labels),
        "pgd": lambda: pgd(fn, pixels, labels, steps=3, seed=4),
        "patchfool": lambda: patchfool(fn, pixels, labels, steps=3),
        "corrupt": lambda: corrupt(pixels, "gaussian_noise", 3, seed=7),
        "evaluate": lambda: torch.tensor(evaluate(lm, dataset, EvalConfig(attacks=("fgsm",), corruptions=("shot_noise",),
                                                                         severities=(2,), batch_size=2)).to_rows()[1]["value"]),
    }


@pytest.mark.parametrize("lm_name", ["tiny_lm", "default_lm"])
def test_concurrent_requests_equal_serial_and_leave_the_model_untouched(lm_name, request):
    lm = request.getfixturevalue(lm_name)
    before = model_state(lm.model)
    weights = state_snapshot(lm.model)
    ops = _operations(lm)
    serial = {name: op() for name, op in ops.items()}

    names = list(ops) * 3
    order = np.random.default_rng(0).permutation(len(names))
    jobs = [names[i] for i in order]
    results: list[tuple[str, object]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(k: int):
        barrier.wait()
        for name in jobs[k::8]:
            try:
                out = ops[name]()
            except BaseException as exc:  # collected and re-raised in the main thread
                with lock:
                    errors.append(exc)
                return
            with lock:
                results.append((name, out))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(results) == len(jobs)
    for name, out in results:
        assert torch.equal(out, serial[name]), name
    assert model_state(lm.model) == before
    assert_state_equal(lm.model, weights)


def test_view_shares_weights_but_not_state(tiny_lm):
    model = tiny_lm.model
    before = model_state(model)
    view = shared_weights_view(model)
    for a, b in zip(model.parameters(), view.parameters()):
        assert a.data_ptr() == b.data_ptr() and a is not b
    view.train()
    view.blocks[0].attn.fused_attn = not view.blocks[0].attn.fused_attn
    view.blocks[0].register_forward_hook(lambda *a: None)
    for p in view.parameters():
        p.requires_grad_(True)
    assert model_state(model) == before
    lm2 = tiny_lm.view()
    assert lm2.model is not model and N.nullspace(lm2) is N.nullspace(tiny_lm)  # derived caches stay shared


def test_view_is_built_module_by_module_and_keeps_the_trees_shape(tiny_lm):
    """The view is hand-built (not deep-copied): same outputs, same module graph (a submodule reached twice is
    one module in the view), containers of its own (hook dicts, lists), and a deep copy for what it cannot
    copy that way (a parametrized weight)."""
    model = tiny_lm.model
    view = shared_weights_view(model)
    x = torch.randn(2, 3, *tiny_lm.img_size, generator=torch.Generator().manual_seed(3)).to(tiny_lm.device)
    with torch.no_grad():
        assert torch.equal(view(x), model(x))
    assert [n for n, _ in view.named_modules()] == [n for n, _ in model.named_modules()]
    assert all(a is not b and type(a) is type(b) for a, b in zip(view.modules(), model.modules()))
    assert all(a._forward_hooks is not b._forward_hooks for a, b in zip(view.modules(), model.modules()))

    shared = torch.nn.Linear(3, 3)
    tied = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    tied.notes = ["kept"]
    tied_view = shared_weights_view(tied)
    assert tied_view[0] is tied_view[2] and tied_view[0] is not shared
    assert tied_view.notes == ["kept"] and tied_view.notes is not tied.notes
    assert tied_view[0].weight.data_ptr() == shared.weight.data_ptr() and not tied_view[0].weight.requires_grad

    orthogonal = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(3, 3))
    ortho_view = shared_weights_view(orthogonal)
    v = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.equal(ortho_view(v), orthogonal(v))
    assert ortho_view.parametrizations is not orthogonal.parametrizations


def test_trace_does_not_depend_on_the_callers_mode(tiny_lm):
    x = torch.randn(2, 3, *tiny_lm.img_size, generator=torch.Generator().manual_seed(1)).to(tiny_lm.device)
    own = tiny_lm.trainable_copy().train()
    assert torch.equal(trace(own, x).attention, trace(tiny_lm.model, x).attention)
    assert own.training and all(m.fused_attn for m in own.modules() if hasattr(m, "fused_attn"))


def test_view_pool_lends_each_view_to_one_caller_and_reuses_it(tiny_lm):
    from nullviz.inspection.attention import attention_views

    pool = attention_views(tiny_lm)
    assert attention_views(tiny_lm.view()) is pool  # one pool per loaded model, shared by its per-run views
    with pool.borrow() as a, pool.borrow() as b:
        assert a is not b and not a.training and not any(getattr(m, "fused_attn", False) for m in a.modules())
    with pool.borrow() as c:
        assert c in (a, b)  # reused, not rebuilt
    x = torch.randn(1, 3, *tiny_lm.img_size, generator=torch.Generator().manual_seed(2)).to(tiny_lm.device)
    compare(tiny_lm, x, None)
    for view in (a, b):
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in view.modules())  # handed back clean


def test_derived_caches_are_explicit_made_once_and_shared_with_views(default_lm):
    """Spectrum, nullspaces and trace views are fields of the loaded model (no __dict__ entries), made once
    even when sessions ask at the same time, and shared by the model's views."""
    import threading

    from nullviz.models.loaded import DerivedCaches, LoadedModel

    lm = LoadedModel(model=default_lm.model, name=default_lm.name, device=default_lm.device,
                     data_config=default_lm.data_config, class_names=default_lm.class_names)
    assert "_derived" not in vars(lm)
    made, results = [], []
    barrier = threading.Barrier(4)

    def make():
        made.append(1)
        return N.patch_embed_spectrum(lm.model)

    def ask():
        barrier.wait()
        results.append(lm.derived.get("spectrum", make))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and all(r is results[0] for r in results)
    assert lm.view().derived is lm.derived and N.nullspace(lm) is N.nullspace(lm.view())
    with pytest.raises(KeyError, match="derived caches"):
        DerivedCaches().get("anything", dict)
