"""Learning-rate schedulers against torch.optim.lr_scheduler (warmup = SequentialLR(LinearLR, main)),
state round trips and option validation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from nntrain.errors import CheckpointError, ConfigError
from nntrain.nn.optim import build_optimizer
from nntrain.nn.schedulers import SCHEDULERS, WARMUP_OPTIONS, build_scheduler

BASE_LR = 0.1
EPOCHS = 30


def _opt(lr=BASE_LR):
    p = np.zeros(3, np.float32)
    return build_optimizer({"type": "sgd", "lr": lr, "momentum": 0.9}, [("0.W", p, np.zeros_like(p))])


def _ours(spec, epochs=EPOCHS, metrics=None):
    """lrs[e] = the lr used in epoch e, for e in 0..epochs-1."""
    opt = _opt()
    sched = build_scheduler(spec, opt, epochs)
    lrs = []
    for e in range(epochs):
        lrs.append(opt.lr)
        assert sched.lr == opt.lr
        sched.step(None if metrics is None else metrics[e])
    return lrs


def _torch_lrs(torch, make, epochs=EPOCHS, values=None):
    param = torch.zeros(3, requires_grad=True)
    topt = torch.optim.SGD([param], lr=BASE_LR, momentum=0.9)
    sched = make(torch.optim.lr_scheduler, topt)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e in range(epochs):
            lrs.append(topt.param_groups[0]["lr"])
            topt.step()
            sched.step() if values is None else sched.step(values[e])
    return lrs


def _with_warmup(S, opt, main, warmup, start):
    if not warmup:
        return main
    linear = S.LinearLR(opt, start_factor=start, end_factor=1.0, total_iters=warmup)
    return S.SequentialLR(opt, [linear, main], milestones=[warmup])


# (our spec, torch's main scheduler given (lr_scheduler module, optimizer, epochs after warmup))
MAIN = [
    ({"type": "step", "step_size": 4, "gamma": 0.5}, lambda S, o, n: S.StepLR(o, step_size=4, gamma=0.5)),
    ({"type": "step", "step_size": 1}, lambda S, o, n: S.StepLR(o, step_size=1)),
    ({"type": "multistep", "milestones": [3, 8, 9, 20], "gamma": 0.3},
     lambda S, o, n: S.MultiStepLR(o, milestones=[3, 8, 9, 20], gamma=0.3)),
    ({"type": "multistep", "milestones": [10]}, lambda S, o, n: S.MultiStepLR(o, milestones=[10])),
    ({"type": "exponential", "gamma": 0.9}, lambda S, o, n: S.ExponentialLR(o, gamma=0.9)),
    ({"type": "cosine"}, lambda S, o, n: S.CosineAnnealingLR(o, T_max=n)),
    ({"type": "cosine", "eta_min": 0.001}, lambda S, o, n: S.CosineAnnealingLR(o, T_max=n, eta_min=0.001)),
    ({"type": "cosine", "T_max": 7, "eta_min": 0.01},  # runs past T_max: the cosine comes back up
     lambda S, o, n: S.CosineAnnealingLR(o, T_max=7, eta_min=0.01)),
    ({"type": "constant"}, lambda S, o, n: S.LambdaLR(o, lambda e: 1.0)),
]
WARMUPS = [(0, None), (1, 0.1), (5, 0.1), (3, 0.5), (4, 1.0)]


@pytest.mark.parametrize("warmup,start", WARMUPS, ids=[f"warmup{w}-{s}" for w, s in WARMUPS])
@pytest.mark.parametrize("spec,make", MAIN, ids=[str(s) for s, _ in MAIN])
def test_matches_torch(spec, make, warmup, start):
    torch = pytest.importorskip("torch")
    full = dict(spec)
    if warmup:
        full.update(warmup_epochs=warmup, warmup_start_factor=start)
    ours = _ours(full)
    theirs = _torch_lrs(torch, lambda S, o: _with_warmup(S, o, make(S, o, EPOCHS - warmup), warmup, start))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15 * BASE_LR)
    assert ours[0] == pytest.approx(BASE_LR * (start if warmup else 1.0))
    if warmup:
        assert ours[warmup] == BASE_LR  # the main schedule starts from the configured lr


def test_warmup_default_start_factor_and_null_spec():
    lrs = _ours({"type": "exponential", "gamma": 0.5, "warmup_epochs": 2}, epochs=5)
    assert lrs == pytest.approx([0.1 * BASE_LR, 0.55 * BASE_LR, BASE_LR, 0.5 * BASE_LR, 0.25 * BASE_LR])
    assert _ours(None, epochs=6) == [BASE_LR] * 6


def _metric_sequences():
    rng = np.random.default_rng(3)
    # a loss that improves, stalls (changes below the threshold), improves again, then gets noisy
    loss = np.concatenate([1.0 / np.arange(1, 7), np.full(12, 1 / 6) + rng.uniform(-1e-6, 1e-6, 12),
                           0.1 - 0.01 * np.arange(5), 0.06 + 0.02 * rng.standard_normal(17)])
    acc = 1.0 - loss
    return [float(v) for v in loss], [float(v) for v in acc]


PLATEAU = [
    {},
    {"patience": 2},
    {"patience": 1, "cooldown": 2, "factor": 0.5},
    {"patience": 0, "factor": 0.5, "min_lr": 0.02},
    {"patience": 0, "factor": 0.5, "min_lr": 0.0999999995},  # the cut is below eps: skipped
    {"patience": 2, "threshold": 0.05, "threshold_mode": "rel"},
    {"patience": 2, "threshold": 0.01, "threshold_mode": "abs", "cooldown": 1},
    {"monitor": "val_acc", "patience": 1, "factor": 0.3},
    {"monitor": "train_acc", "patience": 2, "threshold_mode": "abs", "threshold": 0.005},
    {"monitor": "train_loss", "mode": "max", "patience": 1},  # an explicit mode wins over the monitor's
]


@pytest.mark.parametrize("opts", PLATEAU, ids=[str(o) for o in PLATEAU])
def test_reduce_on_plateau_matches_torch(opts):
    torch = pytest.importorskip("torch")
    loss, acc = _metric_sequences()
    epochs = len(loss)
    metrics = [{"val_loss": l_, "val_acc": a, "train_loss": l_, "train_acc": a} for l_, a in zip(loss, acc)]
    ours = _ours({"type": "reduce_on_plateau", **opts}, epochs=epochs, metrics=metrics)
    kwargs = {k: v for k, v in opts.items() if k != "monitor"}
    monitor = opts.get("monitor", "val_loss")
    kwargs.setdefault("mode", "max" if monitor.endswith("acc") else "min")
    values = [m[monitor] for m in metrics]
    theirs = _torch_lrs(torch, lambda S, o: S.ReduceLROnPlateau(o, **kwargs), epochs=epochs, values=values)
    assert ours == theirs  # same float operations in the same order: exactly equal
    if "min_lr" not in opts:
        assert min(ours) < BASE_LR  # the sequence really exercises a reduction


def _resume(spec, epochs, metrics, cut):
    """lrs of an uninterrupted run vs one saved after `cut` epochs and restored into fresh objects."""
    full = _ours(spec, epochs, metrics)
    opt = _opt()
    sched = build_scheduler(spec, opt, epochs)
    for e in range(cut):
        sched.step(None if metrics is None else metrics[e])
    meta = json.loads(json.dumps(sched.state_dict(), allow_nan=False))
    opt2 = _opt()
    sched2 = build_scheduler(spec, opt2, epochs)
    sched2.load_state_dict(meta)
    resumed = []
    for e in range(cut, epochs):
        resumed.append(opt2.lr)
        sched2.step(None if metrics is None else metrics[e])
    return full[cut:], resumed


@pytest.mark.parametrize("spec", [None, {"type": "step", "step_size": 3, "warmup_epochs": 4},
                                  {"type": "multistep", "milestones": [2, 5]}, {"type": "exponential", "gamma": 0.8},
                                  {"type": "cosine", "warmup_epochs": 3, "eta_min": 1e-3}],
                         ids=str)
@pytest.mark.parametrize("cut", [0, 2, 7])
def test_state_dict_resume(spec, cut):
    full, resumed = _resume(spec, 12, None, cut)
    assert full == resumed


@pytest.mark.parametrize("cut", [0, 1, 9, 20])
def test_reduce_on_plateau_resume(cut):
    loss, acc = _metric_sequences()
    metrics = [{"val_loss": v} for v in loss]
    full, resumed = _resume({"type": "reduce_on_plateau", "patience": 1, "cooldown": 2}, len(loss), metrics, cut)
    assert full == resumed


def test_load_state_dict_is_strict():
    sched = build_scheduler({"type": "step", "step_size": 2}, _opt(), 10)
    meta = sched.state_dict()
    with pytest.raises(CheckpointError, match="cosine"):
        build_scheduler({"type": "cosine"}, _opt(), 10).load_state_dict(meta)
    with pytest.raises(CheckpointError, match="epoch"):
        sched.load_state_dict({**meta, "epoch": -1})
    with pytest.raises(CheckpointError, match="base_lr"):
        sched.load_state_dict({k: v for k, v in meta.items() if k != "base_lr"})
    plateau = build_scheduler({"type": "reduce_on_plateau"}, _opt(), 10)
    with pytest.raises(CheckpointError, match="num_bad_epochs"):
        plateau.load_state_dict({k: v for k, v in plateau.state_dict().items() if k != "num_bad_epochs"})


def test_plateau_without_its_metric_is_a_clear_error():
    sched = build_scheduler({"type": "reduce_on_plateau", "monitor": "val_acc"}, _opt(), 10)
    with pytest.raises(ConfigError, match="val_acc.*available: train_acc, train_loss") as info:
        sched.step({"train_loss": 0.3, "train_acc": 0.9, "val_acc": None})
    assert info.value.path == "scheduler.monitor"


@pytest.mark.parametrize("spec,epochs,path,words", [
    ({"type": "step"}, 10, "scheduler.step_size", "missing required"),
    ({"type": "step", "step_size": 0}, 10, "scheduler.step_size", ">= 1"),
    ({"type": "step", "step_size": 2, "gamma": 0}, 10, "scheduler.gamma", "> 0"),
    ({"type": "multistep", "milestones": [5, 3]}, 10, "scheduler.milestones", "strictly increasing"),
    ({"type": "multistep", "milestones": []}, 10, "scheduler.milestones", "non-empty"),
    ({"type": "multistep", "milestones": 5}, 10, "scheduler.milestones", "list of integers"),
    ({"type": "exponential"}, 10, "scheduler.gamma", "missing required"),
    ({"type": "exponential", "gamma": 0.9, "warmup_start_factor": 0}, 10, "scheduler.warmup_start_factor",
     "(0.0, 1.0]"),
    ({"type": "exponential", "gamma": 0.9, "warmup_start_factor": 1.5}, 10, "scheduler.warmup_start_factor", "1.0"),
    ({"type": "cosine", "warmup_epochs": -1}, 10, "scheduler.warmup_epochs", ">= 0"),
    ({"type": "cosine", "T_max": 0}, 10, "scheduler.T_max", ">= 1"),
    ({"type": "cosine", "T_maxx": 5}, 10, "scheduler.T_maxx", "did you mean 'T_max'"),
    ({"type": "reduce_on_plateau", "monitor": "val_los"}, 10, "scheduler.monitor", "val_loss"),
    ({"type": "reduce_on_plateau", "factor": 1.0}, 10, "scheduler.factor", "(0.0, 1.0)"),
    ({"type": "reduce_on_plateau", "factor": 0.0}, 10, "scheduler.factor", "(0.0, 1.0)"),
    ({"type": "reduce_on_plateau", "mode": "up"}, 10, "scheduler.mode", "min, max"),
    ({"type": "reduce_on_plateau", "warmup_epochs": 2}, 10, "scheduler.warmup_epochs", "valid keys"),
    ({"type": "cosin"}, 10, "scheduler.type", "did you mean 'cosine'"),
    ({"step_size": 3}, 10, "scheduler", "known types"),
    ({"type": "step", "step_size": 3}, 0, "train.epochs", ">= 1"),
])
def test_bad_options(spec, epochs, path, words):
    with pytest.raises(ConfigError) as info:
        build_scheduler(spec, _opt(), epochs)
    assert info.value.path == path
    assert words in str(info.value)


@pytest.mark.parametrize("kind", ["cosine", "step", "constant"])
def test_a_warmup_as_long_as_the_run_is_shortened_with_a_warning(kind, caplog):
    """A one-epoch smoke run of a config with warmup runs: the warmup leaves one main epoch, and says so."""
    spec = {"type": kind, "warmup_epochs": 3, **({"step_size": 2} if kind == "step" else {})}
    with caplog.at_level("WARNING"):
        sched = build_scheduler(spec, _opt(), 1)
    assert sched.warmup_epochs == 0 and "warmup shortened to 0" in caplog.text
    assert SCHEDULERS.resolve(spec, "scheduler", {"epochs": 3})["warmup_epochs"] == 2
    assert SCHEDULERS.resolve(spec, "scheduler", {"epochs": 4})["warmup_epochs"] == 3


def test_declared_options_validate_whole_sections():
    assert {"step", "multistep", "exponential", "cosine", "reduce_on_plateau"} <= set(SCHEDULERS)
    for name, cls in SCHEDULERS.items():
        assert cls.type_name == name
        has_warmup = set(WARMUP_OPTIONS) <= set(cls.options)
        assert has_warmup == (name != "reduce_on_plateau")
    full = SCHEDULERS.resolve({"type": "cosine", "warmup_epochs": 2}, "scheduler")
    assert full == {"type": "cosine", "T_max": None, "eta_min": 0.0, "warmup_epochs": 2, "warmup_start_factor": 0.1}
    # without epochs the epoch-dependent checks are skipped (the config loader may validate early)
    assert SCHEDULERS.resolve({"type": "cosine", "warmup_epochs": 50}, "scheduler")["warmup_epochs"] == 50
