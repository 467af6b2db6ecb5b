"""Optimizers against torch.optim (same params, same gradients each step), gradient clipping against
torch.nn.utils.clip_grad_norm_ / clip_grad_value_, state round trips, options."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nntrain.errors import CheckpointError, ConfigError
from nntrain.nn.optim import CLIP_OPTIONS, OPTIMIZERS, build_optimizer

SHAPES = [(1,), (7,), (3, 4), (2, 3, 3, 2)]
STEPS = 24

CASES = [
    {"type": "sgd", "lr": 0.1},
    {"type": "sgd", "lr": 0.05, "momentum": 0.9},
    {"type": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2},
    {"type": "sgd", "lr": 0.03, "momentum": 0.8, "dampening": 0.3, "weight_decay": 5e-3},
    {"type": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"type": "sgd", "lr": 0.02, "momentum": 0.7, "nesterov": True, "weight_decay": 1e-2},
    {"type": "sgd", "lr": 0.1, "weight_decay": 0.1},
    {"type": "adam", "lr": 0.01},
    {"type": "adam", "lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.05},
    {"type": "adamw", "lr": 0.01},
    {"type": "adamw", "lr": 0.02, "betas": [0.85, 0.95], "eps": 1e-7, "weight_decay": 0.1},
    {"type": "rmsprop", "lr": 0.01},
    {"type": "rmsprop", "lr": 0.01, "momentum": 0.9},
    {"type": "rmsprop", "lr": 0.005, "centered": True},
    {"type": "rmsprop", "lr": 0.01, "alpha": 0.9, "eps": 1e-6, "momentum": 0.5, "centered": True,
     "weight_decay": 0.01},
    {"type": "rmsprop", "lr": 0.02, "weight_decay": 0.1},
    {"type": "adagrad", "lr": 0.1},
    {"type": "adagrad", "lr": 0.1, "lr_decay": 0.01},
    {"type": "adagrad", "lr": 0.05, "initial_accumulator_value": 0.1, "weight_decay": 0.01, "eps": 1e-8},
    {"type": "adagrad", "lr": 0.2, "lr_decay": 0.05, "initial_accumulator_value": 0.5},
    {"type": "adadelta"},
    {"type": "adadelta", "lr": 0.5, "rho": 0.95},
    {"type": "adadelta", "rho": 0.8, "eps": 1e-5, "weight_decay": 0.05},
    # clipping: a max norm below every step's norm (always clips), one above most (clips some steps), values
    {"type": "sgd", "lr": 0.05, "momentum": 0.9, "clip_grad_norm": 0.5},
    {"type": "adam", "lr": 0.01, "clip_grad_norm": 6.0},
    {"type": "rmsprop", "lr": 0.01, "momentum": 0.9, "centered": True, "clip_grad_norm": 1.0},
    {"type": "adamw", "lr": 0.01, "clip_grad_value": 0.3},
    {"type": "adadelta", "weight_decay": 0.01, "clip_grad_value": 1.0},
]
TORCH_CLASSES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad",
                 "adadelta": "Adadelta"}
CLIPS = ("clip_grad_norm", "clip_grad_value")


def _ids(case):
    return "-".join(f"{k}={v}" for k, v in case.items() if k != "type").join([case["type"] + "(", ")"])


def _torch_optimizer(torch, spec, tensors):
    opts = {k: (tuple(v) if k == "betas" else v) for k, v in spec.items() if k != "type" and k not in CLIPS}
    cls = getattr(torch.optim, TORCH_CLASSES[spec["type"]])
    # foreach=False: the single-tensor reference loop (the rules are the same in every implementation)
    return cls(tensors, foreach=False, **opts)


def _make(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [np.zeros_like(p) for p in params]
    triples = [(f"{i}.W", p, g) for i, (p, g) in enumerate(zip(params, grads))]
    return rng, params, grads, triples


def _fill_grads(rng, grads):
    for g in grads:
        g[...] = rng.standard_normal(g.shape).astype(g.dtype)


def _torch_clip(torch, spec, tensors):
    """torch's clipping utility as a training loop calls it before optimizer.step(); the norm before clipping."""
    if spec.get("clip_grad_norm") is not None:
        return torch.nn.utils.clip_grad_norm_(tensors, spec["clip_grad_norm"], foreach=False).item()
    norm = torch.nn.utils.get_total_norm([t.grad for t in tensors], foreach=False).item()
    if spec.get("clip_grad_value") is not None:
        torch.nn.utils.clip_grad_value_(tensors, spec["clip_grad_value"], foreach=False)
    return norm


# float64 is the exact check; float32 agrees to its rounding, which grows over the 24 steps and which
# torch's kernels leave to the machine's SIMD width (centered RMSprop's sqrt(v - avg^2) differed by
# 1.1e-6 on -0.06, 1.9e-5 relative, on an AVX-512 Xeon; it agreed to 1e-6 on AVX2 machines).
@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-12, 1e-14), (np.float32, 1e-5, 1e-5)])
@pytest.mark.parametrize("spec", CASES, ids=_ids)
def test_matches_torch(spec, dtype, rtol, atol):
    torch = pytest.importorskip("torch")
    clips = any(spec.get(k) is not None for k in CLIPS)
    clipped_steps = 0
    rng, params, grads, triples = _make(dtype)
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    topt = _torch_optimizer(torch, spec, tensors)
    opt = build_optimizer(spec, triples)
    ids = [id(p) for p in params]
    for step in range(STEPS):
        if step == STEPS // 2:  # a scheduler changing the lr mid-run
            opt.lr = opt.lr * 0.3
            for group in topt.param_groups:
                group["lr"] = group["lr"] * 0.3
        _fill_grads(rng, grads)
        before = [g.copy() for g in grads]
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g.copy())
        opt.step()
        norm = _torch_clip(torch, spec, tensors)
        topt.step()
        assert opt.grad_norm == pytest.approx(norm, rel=1e-12 if dtype == np.float64 else 1e-6)
        for g, b, t in zip(grads, before, tensors):
            if clips:   # clipped in place, exactly as torch's utilities clip the .grad tensors
                np.testing.assert_allclose(g, t.grad.numpy(), rtol=rtol, atol=atol)
            else:
                np.testing.assert_array_equal(g, b)  # without clipping, step never writes the grads
        changed = any(not np.array_equal(g, b) for g, b in zip(grads, before))
        if spec.get("clip_grad_norm") is not None:
            assert changed == (spec["clip_grad_norm"] < norm + 1e-6)
        elif spec.get("clip_grad_value") is not None:
            assert changed == any(np.abs(b).max() > spec["clip_grad_value"] for b in before)
        clipped_steps += changed
        for p, t in zip(params, tensors):
            assert p.dtype == dtype
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"step {step}")
    assert [id(p) for p in params] == ids and all(p is t[1] for p, t in zip(params, triples))
    assert opt.steps == STEPS
    if spec.get("clip_grad_norm") == 6.0:
        assert 0 < clipped_steps < STEPS   # the case that clips some steps and not others
    arrays, _ = opt.state_dict()
    assert all(a.dtype == dtype for a in arrays.values())
    # the state matches torch's per-parameter state too (the same names, SGD's momentum aside)
    kinds = set()
    for key, a in arrays.items():
        kind, name = key.split("/")
        t = tensors[int(name.split(".")[0])]
        kinds.add(tkind := "momentum_buffer" if kind == "momentum" else kind)
        np.testing.assert_allclose(a, topt.state[t][tkind].numpy(), rtol=rtol, atol=atol)
    assert kinds == {k for k, v in topt.state[tensors[0]].items() if k != "step" and v is not None}


def test_global_norm_and_clipping_helpers_match_torch():
    torch = pytest.importorskip("torch")
    from nntrain.nn.optim import clip_grads_by_norm, clip_grads_by_value, global_grad_norm

    def with_grads(grads):
        tensors = [torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True) for g in grads]
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g.copy())
        return tensors

    rng = np.random.default_rng(4)
    for dtype, rel in ((np.float64, 1e-13), (np.float32, 1e-6)):
        grads = [(rng.standard_normal(s) * 3).astype(dtype) for s in SHAPES + [(64, 33)]]
        norm = global_grad_norm(grads)
        assert norm == pytest.approx(torch.nn.utils.get_total_norm([torch.tensor(g) for g in grads]).item(), rel=rel)
        for max_norm in (norm / 7, norm * 2):
            ours, tensors = [g.copy() for g in grads], with_grads(grads)
            clip_grads_by_norm(ours, max_norm, global_grad_norm(ours))
            assert torch.nn.utils.clip_grad_norm_(tensors, max_norm).item() == pytest.approx(norm, rel=rel)
            for o, t in zip(ours, tensors):
                np.testing.assert_allclose(o, t.grad.numpy(), rtol=rel, atol=0)
                assert o.dtype == dtype
            assert (global_grad_norm(ours) == pytest.approx(max_norm, rel=1e-5)) == (max_norm < norm)
        ours, tensors = [g.copy() for g in grads], with_grads(grads)
        clip_grads_by_value(ours, 0.5)
        torch.nn.utils.clip_grad_value_(tensors, 0.5)
        for o, t in zip(ours, tensors):
            np.testing.assert_array_equal(o, t.grad.numpy())
        assert 0 < sum(int((np.abs(g) > 0.5).sum()) for g in grads)   # it really clamps something
    assert global_grad_norm([]) == 0.0


def test_grad_norm_is_the_mean_over_steps_and_survives_a_state_round_trip():
    rng, params, grads, triples = _make(np.float32, seed=2)
    opt = build_optimizer({"type": "sgd", "lr": 0.01, "clip_grad_norm": 0.1}, triples)
    assert opt.take_grad_norm() is None   # no step yet
    norms = []
    for _ in range(3):
        _fill_grads(rng, grads)
        norms.append(float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))))
        opt.step()
        assert opt.grad_norm == pytest.approx(norms[-1], rel=1e-6)   # before clipping
        assert float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))) == pytest.approx(
            0.1, rel=1e-5)   # after
    arrays, meta = opt.state_dict()
    meta = json.loads(json.dumps(meta))
    opt2 = build_optimizer({"type": "sgd", "lr": 0.01, "clip_grad_norm": 0.1}, _make(np.float32)[3])
    opt2.load_state_dict(arrays, meta)
    assert opt.take_grad_norm() == opt2.take_grad_norm() == pytest.approx(np.mean(norms), rel=1e-6)
    assert opt.take_grad_norm() is None   # taken: the next epoch starts from zero
    old = {k: v for k, v in meta.items() if not k.startswith("grad_norm")}   # a checkpoint from before
    opt2.load_state_dict(arrays, old)
    assert opt2.take_grad_norm() is None
    with pytest.raises(CheckpointError, match="grad_norm_count"):
        opt2.load_state_dict(arrays, {**meta, "grad_norm_count": -1})


def test_momentum_property_is_what_a_one_cycle_schedule_cycles():
    _, _, _, triples = _make(np.float32)
    sgd = build_optimizer({"type": "sgd", "lr": 0.1, "momentum": 0.9}, triples)
    adam = build_optimizer({"type": "adam", "betas": [0.8, 0.99]}, triples)
    rms = build_optimizer({"type": "rmsprop", "momentum": 0.5}, triples)
    assert (sgd.momentum, adam.momentum, rms.momentum) == (0.9, 0.8, 0.5)
    before = adam.state_dict()[1]
    sgd.momentum, adam.momentum, rms.momentum = 0.85, 0.85, 0.95
    assert sgd.config["momentum"] == 0.85 and adam.config["betas"] == [0.85, 0.99] and rms.config["momentum"] == 0.95
    assert before["options"]["betas"] == [0.8, 0.99]   # a state taken earlier is not changed afterwards
    for kind in ("adagrad", "adadelta"):
        opt = build_optimizer({"type": kind}, triples)
        assert opt.momentum is None
        with pytest.raises(ValueError, match="no momentum"):
            opt.momentum = 0.9


def test_defaults_match_torch():
    torch = pytest.importorskip("torch")
    p = [torch.zeros(2, requires_grad=True)]
    for name, cls_name in TORCH_CLASSES.items():
        ours = OPTIMIZERS.resolve({"type": name}, "optimizer")
        theirs = getattr(torch.optim, cls_name)(p).defaults
        for key, value in ours.items():
            if key in CLIPS:
                assert value is None   # clipping is off unless asked for
            elif key != "type":
                want = list(theirs[key]) if key == "betas" else theirs[key]
                assert value == want, (name, key)
    assert OPTIMIZERS.resolve({"type": "adadelta"}, "optimizer")["lr"] == 1.0
    assert OPTIMIZERS.resolve({"type": "adamw"}, "optimizer")["weight_decay"] == 0.01


@pytest.mark.parametrize("spec", CASES, ids=_ids)
def test_state_dict_resume_is_bit_identical(spec):
    rng, params, grads, triples = _make(np.float32, seed=1)
    grad_seq = [[rng.standard_normal(g.shape).astype(np.float32) for g in grads] for _ in range(12)]
    opt = build_optimizer(spec, triples)
    for seq in grad_seq[:5]:
        for g, s in zip(grads, seq):
            g[...] = s
        opt.step()
    opt.lr = opt.lr * 0.5
    arrays, meta = opt.state_dict()
    meta = json.loads(json.dumps(meta, allow_nan=False))  # what a checkpoint stores
    saved_params = [p.copy() for p in params]
    arrays = {k: v.copy() for k, v in arrays.items()}

    for seq in grad_seq[5:]:  # uninterrupted run
        for g, s in zip(grads, seq):
            g[...] = s
        opt.step()

    # a fresh optimizer (as after a restart) over the saved params, then the same gradients
    _, params2, grads2, triples2 = _make(np.float32, seed=99)
    for p2, s in zip(params2, saved_params):
        p2[...] = s
    opt2 = build_optimizer(spec, triples2)
    opt2.load_state_dict(arrays, meta)
    assert opt2.lr == opt.lr * 1.0 and opt2.steps == 5
    for seq in grad_seq[5:]:
        for g, s in zip(grads2, seq):
            g[...] = s
        opt2.step()
    for p, p2 in zip(params, params2):
        np.testing.assert_array_equal(p, p2)
    assert opt2.steps == opt.steps
    assert opt2.take_grad_norm() == opt.take_grad_norm()   # the mean over all 12 steps, on both


def test_state_dict_keys_and_copies():
    _, params, grads, triples = _make(np.float32)
    sgd = build_optimizer({"type": "sgd", "lr": 0.1, "momentum": 0.9}, triples)
    arrays, meta = sgd.state_dict()
    assert sorted(arrays) == sorted(f"momentum/{i}.W" for i in range(len(SHAPES)))
    assert meta["type"] == "sgd" and meta["steps"] == 0 and meta["lr"] == 0.1
    arrays["momentum/0.W"][...] = 5.0  # a copy: the optimizer's own state is untouched
    assert not sgd.state["momentum"][0].any()
    assert build_optimizer({"type": "sgd", "lr": 0.1}, triples).state_dict()[0] == {}
    adam_arrays, _ = build_optimizer({"type": "adam"}, triples).state_dict()
    assert sorted(adam_arrays) == sorted(f"{s}/{i}.W" for s in ("exp_avg", "exp_avg_sq") for i in range(len(SHAPES)))


def test_load_state_dict_is_strict():
    _, params, grads, triples = _make(np.float32)
    opt = build_optimizer({"type": "adam"}, triples)
    arrays, meta = opt.state_dict()
    missing = dict(arrays)
    del missing["exp_avg/1.W"]
    with pytest.raises(CheckpointError, match="exp_avg/1.W"):
        opt.load_state_dict(missing, meta)
    with pytest.raises(CheckpointError, match="unexpected"):
        opt.load_state_dict({**arrays, "exp_avg/9.W": np.zeros(3, np.float32)}, meta)
    with pytest.raises(CheckpointError, match="shape"):
        opt.load_state_dict({**arrays, "exp_avg/2.W": np.zeros((4, 3), np.float32)}, meta)
    with pytest.raises(CheckpointError, match="sgd"):
        opt.load_state_dict(arrays, {**meta, "type": "sgd"})
    with pytest.raises(CheckpointError, match="steps"):
        opt.load_state_dict(arrays, {**meta, "steps": -1})
    bad = {**arrays, "exp_avg/0.W": np.full(1, 3.0, np.float32), "exp_avg/2.W": np.zeros((4, 3), np.float32)}
    with pytest.raises(CheckpointError):
        opt.load_state_dict(bad, meta)
    assert not opt.state["exp_avg"][0].any()  # a failed load changes nothing


@pytest.mark.parametrize("spec,path,words", [
    ({"type": "sgd", "lr": 0}, "optimizer.lr", "> 0"),
    ({"type": "sgd", "lr": -0.1}, "optimizer.lr", "> 0.0"),
    ({"type": "sgd", "lr": "fast"}, "optimizer.lr", "a number"),
    ({"type": "sgd", "lr": 0.1, "nesterov": True}, "optimizer.nesterov", "momentum > 0"),
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}, "optimizer.nesterov",
     "dampening 0"),
    ({"type": "sgd", "lr": 0.1, "momentun": 0.9}, "optimizer.momentun", "did you mean 'momentum'"),
    ({"type": "sgd", "lr": 0.1, "momentum": -0.5}, "optimizer.momentum", ">= 0"),
    ({"type": "sgd", "lr": 0.1, "weight_decay": -1e-4}, "optimizer.weight_decay", ">= 0"),
    ({"type": "adam", "betas": [0.9]}, "optimizer.betas", "list of 2"),
    ({"type": "adam", "betas": [0.9, 1.0]}, "optimizer.betas", "[0.0, 1.0)"),
    ({"type": "adamw", "eps": -1.0}, "optimizer.eps", ">= 0"),
    ({"type": "adamw", "momentum": 0.9}, "optimizer.momentum", "valid keys"),
    ({"type": "sdg", "lr": 0.1}, "optimizer.type", "did you mean 'sgd'"),
    ({"lr": 0.1}, "optimizer", "sgd"),
    ({"type": "sgd", "lr": 0.1, "clip_grad_norm": 0}, "optimizer.clip_grad_norm", "> 0"),
    ({"type": "adam", "clip_grad_value": -1.0}, "optimizer.clip_grad_value", "(or null)"),
    ({"type": "sgd", "lr": 0.1, "clip_grad_norm": 1.0, "clip_grad_value": 0.5}, "optimizer.clip_grad_value",
     "not both"),
    ({"type": "rmsprop", "alpha": 1.5}, "optimizer.alpha", "[0.0, 1.0]"),
    ({"type": "rmsprop", "momentum": -0.1}, "optimizer.momentum", ">= 0"),
    ({"type": "adagrad", "lr_decay": -0.1}, "optimizer.lr_decay", ">= 0"),
    ({"type": "adagrad", "initial_accumulator_value": -1}, "optimizer.initial_accumulator_value", ">= 0"),
    ({"type": "adadelta", "rho": 2}, "optimizer.rho", "[0.0, 1.0]"),
    ({"type": "adadelta", "betas": [0.9, 0.99]}, "optimizer.betas", "valid keys"),
    ("sgd", "optimizer", "mapping"),
])
def test_bad_options(spec, path, words):
    _, _, _, triples = _make(np.float32)
    with pytest.raises(ConfigError) as info:
        build_optimizer(spec, triples)
    assert info.value.path == path
    assert words in str(info.value)


def test_registry_and_declared_options():
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"}
    for name, cls in OPTIMIZERS.items():
        assert cls.type_name == name and "lr" in cls.options
        assert all(cls.options[k] is v for k, v in CLIP_OPTIONS.items())   # one shared declaration
    full = OPTIMIZERS.resolve({"type": "sgd", "lr": 1}, "optimizer")
    assert full == {"type": "sgd", "lr": 1.0, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
                    "weight_decay": 0.0, "clip_grad_norm": None, "clip_grad_value": None}
    assert isinstance(full["lr"], float)


SCRATCH_CASES = [c for c in CASES if c["type"] not in ("sgd", "adam", "adamw") or c.get("weight_decay")
                 or any(k in c for k in CLIPS)]


@pytest.mark.parametrize("spec", SCRATCH_CASES, ids=_ids)
def test_step_reuses_scratch_and_keeps_float32(spec):
    import tracemalloc

    rng = np.random.default_rng(5)
    p = rng.standard_normal((256, 256)).astype(np.float32)  # 256 KiB
    g = rng.standard_normal(p.shape).astype(np.float32)
    opt = build_optimizer(spec, [("0.W", p, g)])
    opt.lr = np.float64(0.01)  # a float64 scalar lr must not upcast the update
    assert type(opt.lr) is float
    opt.step()
    tracemalloc.start()
    opt.step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < p.nbytes // 8, f"step allocated {peak} bytes"
    assert p.dtype == np.float32 and all(a.dtype == np.float32 for a in opt.state_dict()[0].values())
