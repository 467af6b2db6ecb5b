"""Learning-rate schedulers against torch.optim.lr_scheduler (warmup = SequentialLR(LinearLR, main); a
per-batch warmup = LinearLR stepped every batch; onecycle = OneCycleLR with its momentum), state round
trips (also inside an epoch) and option validation."""

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
    ({"type": "cosine", "warmup_epochs": 2, "warmup_steps": 100}, 10, "scheduler.warmup_steps", "not both"),
    ({"type": "step", "step_size": 2, "warmup_steps": -1}, 10, "scheduler.warmup_steps", ">= 0"),
    ({"type": "onecycle", "pct_start": 1.5}, 10, "scheduler.pct_start", "[0.0, 1.0]"),
    ({"type": "onecycle", "three_phase": True, "pct_start": 0.6}, 10, "scheduler.pct_start", "<= 0.5"),
    ({"type": "onecycle", "anneal_strategy": "cosine"}, 10, "scheduler.anneal_strategy", "cos, linear"),
    ({"type": "onecycle", "div_factor": 0}, 10, "scheduler.div_factor", "> 0"),
    ({"type": "onecycle", "warmup_steps": 10}, 10, "scheduler.warmup_steps", "valid keys"),
    ({"type": "step", "step_size": 3}, 0, "train.epochs", ">= 1"),
])
def test_bad_options(spec, epochs, path, words):
    with pytest.raises(ConfigError) as info:
        build_scheduler(spec, _opt(), epochs, batches_per_epoch=5)
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
        assert has_warmup == (name not in ("reduce_on_plateau", "onecycle"))
    full = SCHEDULERS.resolve({"type": "cosine", "warmup_epochs": 2}, "scheduler")
    assert full == {"type": "cosine", "T_max": None, "eta_min": 0.0, "warmup_epochs": 2, "warmup_steps": 0,
                    "warmup_start_factor": 0.1}
    # without epochs the epoch-dependent checks are skipped (the config loader may validate early)
    assert SCHEDULERS.resolve({"type": "cosine", "warmup_epochs": 50}, "scheduler")["warmup_epochs"] == 50


# --- per-batch schedules ------------------------------------------------------------------------------
BATCHES = 7   # batches per epoch in the per-batch tests


def _ours_per_batch(spec, opt, epochs=6, batches=BATCHES):
    """[(lr, momentum)] of every optimizer step of the run, driven as the trainer drives a scheduler."""
    sched = build_scheduler(spec, opt, epochs, batches_per_epoch=batches)
    seq = []
    for e in range(epochs):
        assert sched.epoch_start_lr() == opt.lr
        for _ in range(batches):
            seq.append((opt.lr, opt.momentum))
            opt.step()
            sched.step_batch()
        sched.step({"val_loss": 1.0})
    return seq


def _torch_per_batch(torch, opt_spec, make, epochs=6, batches=BATCHES, per_epoch=None):
    """The same from torch: `make(S, optimizer)` stepped every batch, `per_epoch(S, optimizer)` every epoch."""
    param = torch.zeros(3, requires_grad=True)
    kind = opt_spec["type"]
    opts = {k: (tuple(v) if k == "betas" else v) for k, v in opt_spec.items() if k != "type"}
    topt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
            "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[kind]([param], **opts)
    S = torch.optim.lr_scheduler
    batch_sched = make(S, topt)
    epoch_sched = per_epoch(S, topt) if per_epoch else None
    seq = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(epochs):
            for _ in range(batches):
                group = topt.param_groups[0]
                seq.append((group["lr"], group["betas"][0] if "betas" in group else group.get("momentum")))
                param.grad = torch.zeros(3)
                topt.step()
                batch_sched.step()
            if epoch_sched:
                epoch_sched.step()
    return seq


def _optimizer(spec):
    p = np.zeros(3, np.float32)
    return build_optimizer(spec, [("0.W", p, np.zeros_like(p))])


ONECYCLE = [
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, {}),
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}, {"max_lr": 0.4, "pct_start": 0.25}),
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, {"anneal_strategy": "linear", "div_factor": 10.0,
                                                   "final_div_factor": 100.0}),
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, {"three_phase": True}),
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, {"three_phase": True, "anneal_strategy": "linear",
                                                   "pct_start": 0.5, "base_momentum": 0.8, "max_momentum": 0.9}),
    ({"type": "sgd", "lr": 0.1}, {"cycle_momentum": False}),
    ({"type": "adam", "lr": 0.003, "betas": [0.9, 0.99]}, {}),   # cycles betas[0]
    ({"type": "adamw", "lr": 0.003}, {"max_lr": 0.01, "pct_start": 0.1}),
    ({"type": "rmsprop", "lr": 0.01, "momentum": 0.5}, {"pct_start": 0.4}),
    ({"type": "adagrad", "lr": 0.05}, {"cycle_momentum": False, "pct_start": 0.0}),
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, {"pct_start": 0.99}),
]


@pytest.mark.parametrize("opt_spec,opts", ONECYCLE, ids=[f"{o['type']}-{c}" for o, c in ONECYCLE])
def test_onecycle_matches_torch(opt_spec, opts):
    torch = pytest.importorskip("torch")
    epochs = 6
    ours = _ours_per_batch({"type": "onecycle", **opts}, _optimizer(opt_spec), epochs)
    kwargs = {k: v for k, v in opts.items()}
    kwargs.setdefault("max_lr", opt_spec["lr"])
    theirs = _torch_per_batch(torch, opt_spec, lambda S, o: S.OneCycleLR(o, epochs=epochs, steps_per_epoch=BATCHES,
                                                                         **kwargs), epochs)
    if opts.get("cycle_momentum", True) is False:   # the momentum is the optimizer's own, untouched
        ours = [(lr, None) for lr, _ in ours]
        theirs = [(lr, None) for lr, _ in theirs]
    assert ours == theirs   # the same float operations in the same order: exactly equal
    lrs = [lr for lr, _ in ours]
    peak = kwargs["max_lr"]
    assert lrs[-1] < lrs[0] <= max(lrs) <= peak and max(lrs) == pytest.approx(peak, rel=0.05)


def test_onecycle_cycles_the_optimizers_momentum_in_its_updates():
    opt = _optimizer({"type": "adam", "lr": 0.01, "betas": [0.5, 0.999]})
    sched = build_scheduler({"type": "onecycle"}, opt, 2, batches_per_epoch=10)
    assert opt.config["betas"] == [0.95, 0.999] and opt.lr == pytest.approx(0.01 / 25)
    for _ in range(3):
        sched.step_batch()
    assert opt.config["betas"][0] == opt.momentum < 0.95 and opt.config["betas"][1] == 0.999


@pytest.mark.parametrize("opt_spec,spec", [
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, {"type": "onecycle"}),
    ({"type": "adam", "lr": 0.01}, {"type": "onecycle", "three_phase": True, "anneal_strategy": "linear"}),
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, {"type": "cosine", "warmup_steps": 10}),
    ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, {"type": "step", "step_size": 2, "warmup_steps": 4}),
    ({"type": "sgd", "lr": 0.1}, None),
], ids=str)
@pytest.mark.parametrize("cut", [0, 3, BATCHES + 2, 3 * BATCHES, 5 * BATCHES - 1])
def test_per_batch_state_dict_resumes_inside_an_epoch(opt_spec, spec, cut):
    """A checkpoint taken after `cut` optimizer steps (mostly inside an epoch), restored into fresh objects,
    continues the same lr and momentum sequence bit for bit, and knows the lr its epoch started with."""
    epochs = 5
    full = _ours_per_batch(spec, _optimizer(opt_spec), epochs)
    opt = _optimizer(opt_spec)
    sched = build_scheduler(spec, opt, epochs, batches_per_epoch=BATCHES)
    for t in range(cut):
        sched.step_batch()
        if (t + 1) % BATCHES == 0:
            sched.step({})
    meta = json.loads(json.dumps(sched.state_dict(), allow_nan=False))
    opt2 = _optimizer(opt_spec)
    sched2 = build_scheduler(spec, opt2, epochs, batches_per_epoch=BATCHES)
    sched2.load_state_dict(meta)
    assert (opt2.lr, opt2.momentum) == (opt.lr, opt.momentum) == full[cut]
    assert sched2.epoch_start_lr() == full[cut - cut % BATCHES][0]
    resumed = []
    for t in range(cut, epochs * BATCHES):
        resumed.append((opt2.lr, opt2.momentum))
        sched2.step_batch()
        if (t + 1) % BATCHES == 0:
            sched2.step({})
    assert resumed == full[cut:]


# (our epoch schedule, torch's: chained with a per-batch LinearLR it gives the same product)
WARMUP_STEPS_MAIN = [
    ({"type": "constant"}, None),
    ({"type": "step", "step_size": 2, "gamma": 0.5}, lambda S, o: S.StepLR(o, step_size=2, gamma=0.5)),
    ({"type": "multistep", "milestones": [1, 4]}, lambda S, o: S.MultiStepLR(o, milestones=[1, 4])),
    ({"type": "exponential", "gamma": 0.8}, lambda S, o: S.ExponentialLR(o, gamma=0.8)),
    ({"type": "cosine"}, lambda S, o: S.CosineAnnealingLR(o, T_max=6)),
]


@pytest.mark.parametrize("steps,start", [(1, 0.1), (5, 0.1), (10, 0.25), (20, 0.5), (100, 0.01)])
@pytest.mark.parametrize("spec,make", WARMUP_STEPS_MAIN, ids=[s["type"] for s, _ in WARMUP_STEPS_MAIN])
def test_warmup_steps_matches_torch_linear_lr_every_batch(spec, make, steps, start):
    torch = pytest.importorskip("torch")
    opt_spec = {"type": "sgd", "lr": BASE_LR, "momentum": 0.9}
    ours = _ours_per_batch({**spec, "warmup_steps": steps, "warmup_start_factor": start}, _optimizer(opt_spec))
    theirs = _torch_per_batch(torch, opt_spec, lambda S, o: S.LinearLR(o, start_factor=start, total_iters=steps),
                              per_epoch=make)
    np.testing.assert_allclose([lr for lr, _ in ours], [lr for lr, _ in theirs], rtol=1e-12, atol=0)
    assert ours[0][0] == pytest.approx(BASE_LR * start)
    assert all(m == 0.9 for _, m in ours)   # a warmup leaves the momentum alone


def test_epoch_schedules_ignore_step_batch():
    opt = _opt()
    sched = build_scheduler({"type": "step", "step_size": 1, "gamma": 0.5}, opt, 4, batches_per_epoch=3)
    for _ in range(5):
        sched.step_batch()
        assert opt.lr == BASE_LR
    sched.step({})
    assert opt.lr == BASE_LR * 0.5 and sched.steps == 5 and sched.epoch_start_step == 5
    plateau = build_scheduler({"type": "reduce_on_plateau"}, _opt(), 4)   # no batches per epoch needed
    plateau.step_batch()
    assert plateau.lr == BASE_LR and plateau.state_dict()["steps"] == 1


def test_checkpoints_from_before_per_batch_schedules_load():
    sched = build_scheduler({"type": "step", "step_size": 2}, _opt(), 10)
    old = {k: v for k, v in sched.state_dict().items() if k not in ("steps", "epoch_start_step")}
    sched.load_state_dict({**old, "epoch": 3})
    assert sched.steps == 0 and sched.epoch == 3 and sched.lr == pytest.approx(BASE_LR * 0.1)
    with pytest.raises(CheckpointError, match="epoch_start_step"):
        sched.load_state_dict({**old, "steps": 3, "epoch_start_step": 4})
    with pytest.raises(CheckpointError, match="steps"):
        sched.load_state_dict({**old, "steps": -2})


@pytest.mark.parametrize("opt_spec,words", [
    ({"type": "sgd", "lr": 0.1}, "sgd optimizer has momentum 0"),
    ({"type": "rmsprop"}, "rmsprop optimizer has momentum 0"),
    ({"type": "adagrad"}, "no momentum or beta1"),
    ({"type": "adadelta"}, "no momentum or beta1"),
])
def test_onecycle_needs_a_momentum_to_cycle(opt_spec, words):
    with pytest.raises(ConfigError, match=words) as info:
        build_scheduler({"type": "onecycle"}, _optimizer(opt_spec), 3, batches_per_epoch=4)
    assert info.value.path == "scheduler.cycle_momentum"
    # without cycling, it runs (and leaves the optimizer's momentum alone)
    build_scheduler({"type": "onecycle", "cycle_momentum": False}, _optimizer(opt_spec), 3, batches_per_epoch=4)
    # a config is refused when it is validated, before anything is built
    from nntrain.config import validate_config

    cfg = {"data": {"dataset": "mnist-mini"}, "model": [{"type": "flatten"}, {"type": "linear", "out_features": 10}],
           "optimizer": opt_spec, "scheduler": {"type": "onecycle"}}
    with pytest.raises(ConfigError, match=words) as info:
        validate_config(cfg, source="x.yaml")
    assert info.value.path == "scheduler.cycle_momentum"


def test_onecycle_needs_the_batches_per_epoch():
    with pytest.raises(ValueError, match="batches_per_epoch"):
        build_scheduler({"type": "onecycle"}, _opt(), 3)


def test_onecycle_past_its_last_step_stays_at_the_end():
    opt = _opt()
    sched = build_scheduler({"type": "onecycle"}, opt, 1, batches_per_epoch=4)
    for _ in range(4):
        sched.step_batch()
    end = opt.lr
    sched.step_batch()   # a run resumed with a smaller batch size: more steps than planned
    assert opt.lr == end


@pytest.mark.parametrize("anneal", ["linear", "cos"])
def test_onecycle_stays_at_its_final_lr_after_the_last_step(anneal):
    """After the run's last batch the schedule stays at max_lr/(div_factor·final_div_factor) (torch would
    extrapolate one step further, to a negative lr when linear), so the last checkpoint's optimizer
    state loads (its lr must be >= 0)."""
    spec = {"type": "onecycle", "max_lr": 0.2, "pct_start": 0.25, "anneal_strategy": anneal}
    opt = _optimizer({"type": "sgd", "lr": 0.2, "momentum": 0.9})
    _ours_per_batch(spec, opt, epochs=3)
    assert opt.lr == pytest.approx(0.2 / 25 / 1e4)
    arrays, meta = opt.state_dict()
    _optimizer({"type": "sgd", "lr": 0.2, "momentum": 0.9}).load_state_dict(arrays, json.loads(json.dumps(meta)))
