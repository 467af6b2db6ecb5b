"""Optimizers against torch.optim (same params, same gradients each step), state round trips, options."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nntrain.errors import CheckpointError, ConfigError
from nntrain.nn.optim import OPTIMIZERS, build_optimizer

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
]


def _ids(case):
    return "-".join(f"{k}={v}" for k, v in case.items() if k != "type").join([case["type"] + "(", ")"])


def _torch_optimizer(torch, spec, tensors):
    opts = {k: (tuple(v) if k == "betas" else v) for k, v in spec.items() if k != "type"}
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec["type"]]
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


@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-5, 1e-8), (np.float32, 1e-4, 1e-6)])
@pytest.mark.parametrize("spec", CASES, ids=_ids)
def test_matches_torch(spec, dtype, rtol, atol):
    torch = pytest.importorskip("torch")
    rng, params, grads, triples = _make(dtype)
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    topt = _torch_optimizer(torch, spec, tensors)
    opt = build_optimizer(spec, triples)
    ids = [id(p) for p in params]
    for step in range(STEPS):
        if step == STEPS // 2:  # a scheduler changing the lr mid-run
            opt.lr = spec["lr"] * 0.3
            for group in topt.param_groups:
                group["lr"] = spec["lr"] * 0.3
        _fill_grads(rng, grads)
        before = [g.copy() for g in grads]
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
        for g, b in zip(grads, before):
            np.testing.assert_array_equal(g, b)  # step never writes the grads
        for p, t in zip(params, tensors):
            assert p.dtype == dtype
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"step {step}")
    assert [id(p) for p in params] == ids and all(p is t[1] for p, t in zip(params, triples))
    assert opt.steps == STEPS
    arrays, _ = opt.state_dict()
    assert all(a.dtype == dtype for a in arrays.values())
    # the state matches torch's per-parameter state too
    tstate = {"momentum": "momentum_buffer", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
    for key, a in arrays.items():
        kind, name = key.split("/")
        t = tensors[int(name.split(".")[0])]
        np.testing.assert_allclose(a, topt.state[t][tstate[kind]].numpy(), rtol=rtol, atol=atol)


def test_defaults_match_torch():
    torch = pytest.importorskip("torch")
    p = [torch.zeros(2, requires_grad=True)]
    for name, cls in [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]:
        ours = OPTIMIZERS.resolve({"type": name}, "optimizer")
        theirs = cls(p).defaults
        for key, value in ours.items():
            if key != "type":
                want = list(theirs[key]) if key == "betas" else theirs[key]
                assert value == want, (name, key)
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
    opt.lr = spec["lr"] * 0.5
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
    ("sgd", "optimizer", "mapping"),
])
def test_bad_options(spec, path, words):
    _, _, _, triples = _make(np.float32)
    with pytest.raises(ConfigError) as info:
        build_optimizer(spec, triples)
    assert info.value.path == path
    assert words in str(info.value)


def test_registry_and_declared_options():
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw"}
    for name, cls in OPTIMIZERS.items():
        assert cls.type_name == name and "lr" in cls.options
    full = OPTIMIZERS.resolve({"type": "sgd", "lr": 1}, "optimizer")
    assert full == {"type": "sgd", "lr": 1.0, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
                    "weight_decay": 0.0}
    assert isinstance(full["lr"], float)


@pytest.mark.parametrize("spec", [CASES[3], CASES[5], CASES[8], CASES[10]], ids=_ids)
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
