"""Exercise 5's settings: one network's (Extras, beside assignment2.Config), the recipe and the
experiment's sizes (Exercise5, QUICK for smoke tests), and the ablation's rows, each one change
to the recipe. An experiment is data: every other module takes these and looks rows up by name.
"""
from dataclasses import dataclass, replace

import assignment2 as a


@dataclass(frozen=True)
class Extras:
    """Exercise 5's settings of one network, beside its assignment2.Config."""
    optimizer: str = "adam"  # sgd (eqs. 10-11), nesterov, adam
    schedule: str = "linear"  # eta_max falling linearly to 0, or cyclic (eqs. 14-15)
    flip: bool = True  # mirror each training image left-right with probability 1/2
    shift: int = 3  # and move it by tx, ty in [-shift, shift] pixels, edges repeated
    pca: int = 512  # train W1 in the top pca principal directions (0: all of pixel space)
    p_drop: float = 0.0  # probability of dropping a hidden unit in training (inverted dropout)
    momentum: float = 0.9  # Nesterov momentum
    beta1: float = 0.9  # Adam's decay of the first moment
    beta2: float = 0.999  # Adam's decay of the second moment
    eps: float = 1e-8  # Adam's guard against division by zero


def check_extras(x: Extras) -> None:
    bad = [f"{k}={getattr(x, k)!r}" for k, ok in (
        ("optimizer", x.optimizer in ("sgd", "nesterov", "adam")),
        ("schedule", x.schedule in ("linear", "cyclic")), ("shift", 0 <= x.shift <= 8),
        ("pca", 0 <= x.pca <= a.D), ("p_drop", 0 <= x.p_drop < 1),
        ("momentum", 0 <= x.momentum < 1), ("beta1", 0 <= x.beta1 < 1),
        ("beta2", 0 <= x.beta2 < 1), ("eps", x.eps > 0)) if not ok]
    if bad:
        raise a.ConfigError("invalid Exercise 5 settings: " + ", ".join(bad))


@dataclass(frozen=True)
class Exercise5:
    """The recipe and the experiment's sizes; QUICK shrinks them for smoke tests."""
    m: int = 4096  # hidden units of one network
    pca: int = 512  # W1 is trained in the top pca principal directions of the training images
    lam: float = 6.25e-5  # L2 penalty of eq. 7: the ablation's best row at 140 epochs ...
    ablation_lam: float = 2.5e-4  # ... of the recipe the ablation measured (torch's wd 5e-4)
    eta: float = 2e-3  # Adam's step size, falling linearly to 0 ...
    epochs: int = 140  # ... over this many epochs ...
    batch: int = 400  # ... of batches of this many images (eta 1e-3 at 100: eta ~ sqrt(batch))
    shift: int = 3  # every image mirrored with probability 1/2 and moved by up to 3 pixels
    points: int = 15  # evaluation points on each curve
    members: int = 2  # the final network: up to this many runs, hidden units side by side
    seeds: int = 2  # ... all made again with the next seeds: members * seeds runs
    nesterov_eta: float = 0.04  # the ablation: Nesterov momentum 0.9 instead of Adam
    cyclic_eta: float = 0.15  # ... or the cyclic SGD of eqs. 14-15, eta_max ...
    cycles: int = 3  # ... over this many cycles
    ablation_seeds: int = 2  # runs of every ablation row (the recipe's: one more)
    ablation_epochs: int = 70  # the budget of the ablation's rows; three again at epochs
    views: int = 8  # distillation: the teacher scores this many views of every training image
    distil_grid: tuple = ((1.0, 1.0, False), (1.0, 0.5, False),
                          (3.0, 0.5, False))  # (T, alpha, per view) tried at epochs ...
    distil_refine: tuple = ((0.25, 140),)  # ... then the best: (lam x, epochs)
    grid: int = 2  # per-view targets: the teacher scores the moves every grid px (both mirrors)
    consistency_images: int = 300  # every view of this many images scored, to compare targets
    logit_alphas: tuple = (1.0, 0.75, 0.5)  # the squared error of logits: its weight (labels' 0,
    # 0.25, 0.5), chosen on one run each
    long_epochs: int = 280  # the distillation's ablation: the longer schedule


QUICK = Exercise5(m=40, pca=16, epochs=2, batch=100, points=2, cycles=1, ablation_epochs=1,
                  views=3, distil_grid=((1.0, 1.0, False), (2.0, 0.5, True)),
                  distil_refine=((0.25, 2), (1.0, 1)), grid=6, consistency_images=20,
                  logit_alphas=(1.0, 0.5), long_epochs=3)


def recipe(e: Exercise5, n_train: int, epochs: int | None = None) -> tuple:
    """One network of the recipe on n_train images, (Config, Extras); epochs: the budget, if
    not e.epochs."""
    per_epoch = n_train // e.batch
    cfg = a.Config(m=e.m, lam=e.lam, eta_max=e.eta, n_s=(epochs or e.epochs) * per_epoch // 2,
                   n_cycles=1, n_batch=e.batch, evals_per_cycle=e.points, eval_train=False)
    return cfg, Extras(optimizer="adam", shift=e.shift, pca=e.pca)


def ablation(e: Exercise5, n_train: int) -> dict:
    """One change per row: {name: (Config, Extras, the row it is measured against)}. The rows
    of short_rows train for e.ablation_epochs against the recipe at that budget; then the
    recipe and three of the rows again at its own budget, e.epochs, to see whether the
    ordering holds there. The rows are as planned, before lam was chosen from them."""
    e = replace(e, lam=e.ablation_lam)
    base, rows, again = short_rows(e, n_train)
    out = {name: (c, y, base) for name, (c, y) in rows.items()}
    full = recipe(e, n_train)
    out["recipe"] = (*full, "recipe")
    for name in again:
        c, y, _ = out[name]
        out[f"{name}, {e.epochs} epochs"] = (replace(full[0], lam=c.lam), y, "recipe")
    return out


def short_rows(e: Exercise5, n_train: int) -> tuple:
    """(the name of the recipe row at e.ablation_epochs, {name: (Config, Extras)} of it and of
    one change each, the names of the rows trained again at e.epochs)."""
    def at(scale=1.0):
        return recipe(e, n_train, round(e.ablation_epochs * scale))
    cfg, x = at()
    total, per_100 = 2 * cfg.n_s, n_train // 100  # update steps; steps of an epoch at batch 100
    cyclic = replace(cfg, eta_max=e.cyclic_eta, n_s=total // (2 * e.cycles), n_cycles=e.cycles,
                     evals_per_cycle=max(1, e.points // e.cycles))
    base = f"recipe, {e.ablation_epochs} epochs"
    lam4, lam16 = f"lam / 4 ({e.lam / 4:g})", f"lam / 16 ({e.lam / 16:g})"
    rows = {base: (cfg, x),
            "no augmentation": (cfg, replace(x, flip=False, shift=0)),
            lam4: (replace(cfg, lam=e.lam / 4), x),
            f"lam x 4 ({e.lam * 4:g})": (replace(cfg, lam=e.lam * 4), x),
            lam16: (replace(cfg, lam=e.lam / 16), x),
            "dropout 0.3": (cfg, replace(x, p_drop=0.3)),
            "Nesterov momentum, not Adam": (replace(cfg, eta_max=e.nesterov_eta),
                                            replace(x, optimizer="nesterov")),
            "cyclic SGD (eqs. 14-15), not Adam": (cyclic, replace(x, optimizer="sgd",
                                                                  schedule="cyclic")),
            "mirroring only": (cfg, replace(x, shift=0)),
            f"shifts only (+-{e.shift} px)": (cfg, replace(x, flip=False)),
            "batch 100 (eta / 2)": (replace(cfg, n_batch=100, eta_max=e.eta / 2,
                                            n_s=e.ablation_epochs * per_100 // 2), x),
            f"m={e.m // 2}": (replace(cfg, m=e.m // 2), x),
            f"m={e.m * 2}": (replace(cfg, m=e.m * 2), x),
            **({f"{e.pca // 2} directions": (cfg, replace(x, pca=e.pca // 2)),
                f"{e.pca * 3 // 2} directions": (cfg, replace(x, pca=e.pca * 3 // 2))}
               if e.pca else {}),
            f"{round(e.ablation_epochs / 2)} epochs": (at(0.5)[0], x),
            f"{round(e.ablation_epochs * 1.5)} epochs": (at(1.5)[0], x)}
    return base, rows, ("no augmentation", lam4, lam16)


def parts(e: Exercise5) -> dict:
    """The rows of the ablation that take one part of the recipe away: {row: that part}. Minus
    a row's difference to its recipe row is what the part brings."""
    half, lam = round(e.ablation_epochs / 2), e.ablation_lam
    out = {"no augmentation": "mirroring and shifts",
           "mirroring only": f"shifts of up to {e.shift} px, beside mirroring",
           f"shifts only (+-{e.shift} px)": "mirroring, beside shifts",
           "cyclic SGD (eqs. 14-15), not Adam": "Adam, eta falling linearly, not cyclic SGD",
           "Nesterov momentum, not Adam": "Adam, not Nesterov momentum",
           f"m={e.m // 2}": f"m={e.m}, not {e.m // 2}",
           "batch 100 (eta / 2)": f"batches of {e.batch}, not 100",
           f"{half} epochs": f"{e.ablation_epochs} epochs, not {half}",
           f"lam x 4 ({lam * 4:g})": f"lam={lam:g}, not {lam * 4:g}"}
    if e.pca:
        out[f"{e.pca // 2} directions"] = f"{e.pca} principal directions, not {e.pca // 2}"
    return out | {f"{row}, {e.epochs} epochs": f"{part} (at {e.epochs} epochs)"
                  for row, part in out.items()}


def distil_rows(e: Exercise5, base: dict, logit_alpha: float) -> dict:
    """The distillation's ablation: {name: (setting, the row it is measured against)}, each
    one change. base: the search's best setting of the mean targets (distil_step.Students);
    per-view rows train on the nearest scored view's scores; {"labels": True, "epochs": E}:
    the labels alone at that budget."""
    E, L = base["epochs"], e.long_epochs
    per_view = base | {"per_view": True}
    lab, means, views = f"labels only, {E} epochs", f"mean of {e.views} views", "per view"
    return {lab: ({"labels": True, "epochs": E}, lab),
            f"labels only, {L} epochs": ({"labels": True, "epochs": L}, lab),
            means: (base | {"per_view": False}, lab),
            views: (per_view, means),
            f"per view, {L} epochs": (per_view | {"epochs": L}, views),
            f"per view, squared error of logits (alpha={logit_alpha:g})": (
                per_view | {"loss": "logits", "alpha": logit_alpha}, views)}


def epochs_of(cfg: a.Config, n_train: int) -> float:
    """The budget of a run in epochs of n_train images."""
    return round(2 * cfg.n_s * cfg.n_cycles / (n_train // cfg.n_batch), 2)
