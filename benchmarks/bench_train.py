"""Time one training epoch of assignment2.py against a torch autograd loop and the machine's
matrix-product peak.

    python benchmarks/bench_train.py              # m=50 on 49,000 images, m=1000 on 10,000
    python benchmarks/bench_train.py --repeats 3 --skip-wide
    python benchmarks/bench_train.py --augment    # m=50: augmented (mirror + shift) vs plain
    python benchmarks/bench_train.py --recipe     # Exercise 5's step (m=4096 in 512 PCs,
                                                  # augmented, Adam, its batch) vs its floor
                                                  # on this machine and torch

All in one process, on synthetic float32 data of CIFAR's shape (d=3072, K=10), batch 100 and the
cyclic schedule unless said otherwise. The project's epoch is timed through assignment2.run() (or
bonus.wide.train_network), the code path the program uses: a run of three epochs minus a run of one
epoch, halved, so the evaluation passes at the start and the end (the same in both) cancel out.
torch keeps its default OpenMP settings (its fastest here); after its loop the benchmark pauses for
a second, so its idle OpenMP threads stop spinning on the cores before numpy's next timing starts.
Last line: epoch_s=<x> torch_s=<y> ratio=<x/y> gemm_peak_fraction=<f> (m=50; medians); with
--recipe: recipe_epoch_s=<x> recipe_floor_s=<f> recipe_torch_s=<y> recipe_ratio=<x/y>
recipe_floor_ratio=<x/f>.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import assignment2 as a  # noqa: E402
from bonus import augment, settings, wide  # noqa: E402


def synthetic(n, rng, d=a.D):
    # (d, n), as normalise() returns it
    X = np.asfortranarray(rng.standard_normal((d, n), dtype=np.float32))
    return a.Split(X, rng.integers(0, a.K, n))


class SetupClock:
    """Times the one-time layouts of the training set for augmentation (augment.augment_source,
    and augment.projected_crops, which uses it), once per run: reported on their own, since they
    are not in an epoch's time."""

    NAMES = ((wide, "projected_crops"), (wide, "augment_source"), (augment, "augment_source"))

    def __init__(self):
        self.seconds, self.depth = 0.0, 0
        self.real = {(m, n): getattr(m, n) for m, n in self.NAMES}

    def __enter__(self):
        def timed(real):
            def run(*args):
                self.depth += 1
                t0 = time.perf_counter()
                try:
                    return real(*args)
                finally:
                    self.depth -= 1
                    if not self.depth:  # the outermost call: augment_source inside counts once
                        self.seconds += time.perf_counter() - t0
            return run

        for (module, name), real in self.real.items():
            setattr(module, name, timed(real))
        return self

    def __exit__(self, *exc):
        for (module, name), real in self.real.items():
            setattr(module, name, real)


def project_epoch(tr, va, m, B, epochs=3, setups=None, basis=None, **extra):
    """Seconds for one epoch of assignment2's training: (run(epochs) - run(1 epoch)) / (epochs -
    1), each run timed by the trainer's own clock (its update steps, and the evaluation at step 0,
    which cancels), so the one-time augmentation layout is not in it; the layout's seconds per
    run are appended to setups.
    extra: settings.Extras fields such as flip, shift or optimizer (Exercise 5; plain SGD and no
    augmentation unless given)."""
    per_epoch = tr.n // B
    spec = {k: extra.pop(k) for k in ("lam", "eta_max") if k in extra}  # Config's, not Extras'
    times, steps = [], []
    # one cycle of 2 n_s steps: `epochs` epochs, then 1
    for n_s in (epochs * per_epoch // 2, per_epoch // 2):
        cfg = a.Config(m=m, n_s=n_s, n_batch=B, evals_per_cycle=1, eval_train=False, **spec)
        x = settings.Extras(**(dict(optimizer="sgd", schedule="cyclic", flip=False, shift=0, pca=0)
                            | extra))
        with SetupClock() as setup:
            if extra:
                _, hist = wide.train_network(tr, va, cfg, x, np.random.default_rng(0), basis,
                                              log=lambda s: None)
            else:  # the spec's trainer, as the program runs it
                _, hist = a.run(tr, va, cfg, np.random.default_rng(0), log=lambda s: None)
            times.append(hist["seconds"][-1])  # the trainer's clock: its steps and first point
        steps.append(2 * n_s)
        if setups is not None and setup.seconds:
            setups.append(setup.seconds)
    return (times[0] - times[1]) / ((steps[0] - steps[1]) / per_epoch)


def torch_epoch(tr, m, B, lam=0.01, eta_min=1e-5, eta_max=1e-1):
    """The same network, loss, penalty and cyclic update, written the way a torch user would:
    autograd, float32."""
    import torch

    g = torch.Generator().manual_seed(0)
    d, n = tr.X.shape
    XT = torch.from_numpy(np.ascontiguousarray(tr.X.T))  # (n, d)
    y = torch.from_numpy(tr.y)
    params = [
        (torch.randn(m, d, generator=g) / math.sqrt(d)).requires_grad_(),
        torch.zeros(m, requires_grad=True),
        (torch.randn(a.K, m, generator=g) / math.sqrt(m)).requires_grad_(),
        torch.zeros(a.K, requires_grad=True),
    ]
    W1, b1, W2, b2 = params
    per_epoch, n_s = n // B, n // B // 2
    t0 = time.perf_counter()
    perm = torch.randperm(n, generator=g)
    for t in range(per_epoch):
        idx = perm[t * B : (t + 1) * B]
        S = torch.relu(XT[idx] @ W1.T + b1) @ W2.T + b2  # (B, K)
        loss = torch.nn.functional.cross_entropy(S, y[idx]) + lam * (
            W1.square().sum() + W2.square().sum()
        )
        grads = torch.autograd.grad(loss, params)
        eta = a.cyclic_eta(t, eta_min, eta_max, n_s)
        with torch.no_grad():
            for p, gr in zip(params, grads):
                p -= eta * gr
    return time.perf_counter() - t0


def gemm_gflops(size=2048, reps=5):
    A = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    A @ A
    t0 = time.perf_counter()
    for _ in range(reps):
        A @ A
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9


def epoch_gflop(n, m, B, d=a.D):
    """Matrix-product work of one epoch: W1 X and G X^T dominate (2 m d per image each), plus the
    small layer."""
    return (n // B) * B * (4 * m * d + 6 * a.K * m) / 1e9


def stats(xs):
    return statistics.median(xs), min(xs)


def augment_ratio(repeats, m=50, n=49000, B=100):
    """Exercise 5's target: an epoch with mirroring and +-3 pixel shifts against a plain epoch,
    same process, interleaved, each as (run(5 epochs) - run(1 epoch)) / 4. The augmented run also
    builds its padded, mirrored copy of the training set once per run; that one-time cost is
    timed apart (see SetupClock) and printed."""
    rng = np.random.default_rng(0)
    tr, va = synthetic(n, rng), synthetic(1000, rng)
    plain, aug, setups = [], [], []
    for _ in range(repeats):
        plain.append(project_epoch(tr, va, m, B, epochs=5))
        aug.append(project_epoch(tr, va, m, B, epochs=5, setups=setups, flip=True, shift=3))
    (p_med, p_min), (a_med, a_min) = stats(plain), stats(aug)
    print(
        f"m={m}, {n} images: plain epoch {p_med:.3f}/{p_min:.3f} s, augmented epoch "
        f"{a_med:.3f}/{a_min:.3f} s (median/min); once per run, the padded and mirrored copy: "
        f"{min(setups):.2f}-{max(setups):.2f} s"
    )
    print(f"plain_s={p_med:.3f} augmented_s={a_med:.3f} augmented_ratio={a_med / p_med:.3f}")


def torch_recipe_epoch(tr, m, B, basis, lam, eta, shift, optimizer="nesterov"):
    """One epoch of Exercise 5's wide recipe written with torch autograd, the way a torch user
    would: the same augmented gather (mirror, +-shift crops, from assignment2.augment_source), the
    projection onto the principal directions, the network on V (m, k), cross-entropy plus
    lam ||W||^2 (weight decay 2 lam on the weights) and torch.optim.SGD with Nesterov momentum 0.9
    (or torch.optim.Adam) and a linear decay. The one-time layout of the images is not timed, as
    in project_epoch."""
    import torch

    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    windows = augment.augment_source(np.ascontiguousarray(tr.X.T), True, shift)
    U, y, k = torch.from_numpy(basis), torch.from_numpy(tr.y), basis.shape[1]
    V = (torch.randn(m, k, generator=g) / math.sqrt(k)).requires_grad_()
    W2 = (torch.randn(a.K, m, generator=g) / math.sqrt(m)).requires_grad_()
    b1, b2 = torch.zeros(m, requires_grad=True), torch.zeros(a.K, requires_grad=True)
    groups = [{"params": [V, W2], "weight_decay": 2 * lam}, {"params": [b1, b2]}]
    opt = (torch.optim.Adam(groups, lr=eta) if optimizer == "adam" else
           torch.optim.SGD(groups, lr=eta, momentum=0.9, nesterov=True))
    per_epoch = tr.n // B
    t0 = time.perf_counter()
    perm = rng.permutation(tr.n)
    for t in range(per_epoch):
        idx = perm[t * B : (t + 1) * B]
        f, (oy, ox) = rng.integers(0, 2, B), rng.integers(0, 2 * shift + 1, (2, B))
        Xb = torch.from_numpy(augment.augmented_batch(windows, idx, f, oy, ox)) @ U  # (B, k)
        S = torch.relu(Xb @ V.T + b1) @ W2.T + b2  # (B, K)
        loss = torch.nn.functional.cross_entropy(S, y[idx])
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = eta * (1 - t / per_epoch)
        opt.step()
    return time.perf_counter() - t0


def best_of(run, reps=7):
    """The fastest of reps timed calls of run, after one untimed call."""
    run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def recipe_floor(m, k, n, B):
    """The least time of an epoch of the wide recipe on this machine: its matrix products at
    the speed numpy reaches on their shapes and layouts (W1 Z, W2 H, G H^T, W2^T G, G1 Z^T, as
    the trainer calls them), plus Adam's least memory traffic (read the parameters, gradients
    and both moments, write three back: 7 float32 arrays a step) at the bandwidth numpy's copy
    of a large array reaches. Seconds: (epoch, products of a step, update of a step)."""
    rng = np.random.default_rng(0)

    def arr(*shape, order="C"):
        return np.asarray(rng.standard_normal(shape, dtype=np.float32), order=order)
    Z, W1, W2 = arr(B, k).T, arr(m, k, order="F"), arr(a.K, m)  # (k, B) as a gathered batch
    H, G, G1, dW1 = arr(m, B, order="F"), arr(a.K, B), arr(m, B, order="F"), arr(m, k, order="F")

    def products():
        (Z.T @ W1.T).T  # (m, B), eq. 1
        W2 @ H  # (K, B), eq. 3
        G @ H.T  # (K, m), eq. 12
        (G.T @ W2).T  # (m, B)
        np.matmul(Z, G1.T, out=dW1.T)  # (m, k), eq. 12
    src = arr(1 << 24)
    dst = np.empty_like(src)
    bandwidth = 2 * src.nbytes / best_of(lambda: np.copyto(dst, src), 5)  # bytes/s, read+write
    update = 7 * 4 * (m * k + m + a.K * m + a.K) / bandwidth
    step = best_of(products)
    return (n // B) * (step + update), step, update


def recipe_ratio(repeats, m=4096, k=512, n=20000, B=None, lam=2.5e-4, shift=3,
                 optimizer="adam"):
    """Exercise 5's speed targets: the project's trainer against its floor on this machine
    (recipe_floor) and a torch autograd loop of the same step at a width the wide recipe uses
    (W1 in the top k principal directions, mirroring and +-3 pixel shifts, Adam or Nesterov
    momentum with a linear decay, no dropout) at the recipe's batch size B. Interleaved,
    medians."""
    import torch

    torch.set_num_threads(2)
    e = settings.Exercise5()
    B = B or e.batch
    rng = np.random.default_rng(0)
    tr, va = synthetic(n, rng), synthetic(1000, rng)
    basis = augment.pca_basis(np.ascontiguousarray(tr.X.T), k, mirror=True)  # (d, k)
    eta = e.eta if optimizer == "adam" else e.nesterov_eta
    cfg = dict(pca=k, flip=True, shift=shift, optimizer=optimizer, schedule="linear", lam=lam)
    ours, floors, theirs = [], [], []
    for _ in range(repeats):
        ours.append(project_epoch(tr, va, m, B, epochs=3, basis=basis, eta_max=eta, **cfg))
        floors.append(recipe_floor(m, k, n, B))
        theirs.append(torch_recipe_epoch(tr, m, B, basis, lam, eta, shift, optimizer))
        time.sleep(1.0)  # torch's OpenMP workers go to sleep before numpy needs both cores
    o_med, t_med = stats(ours)[0], stats(theirs)[0]
    f_med, step, update = (statistics.median(f[i] for f in floors) for i in range(3))
    print(f"m={m}, top {k} PCs, mirror + shifts, {optimizer}, batch {B}, {n} images: ours "
          f"{o_med:.3f}/{min(ours):.3f} s per epoch (median/min), torch autograd {t_med:.3f} s, "
          f"floor {f_med:.3f} s (products {1e3 * step:.2f} ms + update {1e3 * update:.2f} ms "
          f"a step)")
    print(f"recipe_epoch_s={o_med:.3f} recipe_floor_s={f_med:.3f} recipe_torch_s={t_med:.3f} "
          f"recipe_ratio={o_med / t_med:.3f} recipe_floor_ratio={o_med / f_med:.3f}")


def update_share(tr, m=50, B=100, steps=3000):
    """The share of the spec's update step (assignment2.sgd_step) spent in eqs. 10-11,
    params[k] -= eta * grads[k], against the gradients of eqs. 12-13 on the batch."""
    rng = np.random.default_rng(0)
    params, cfg = a.init_params(tr.X.shape[0], m, rng, "float32"), a.Config(m=m)
    XT = np.ascontiguousarray(tr.X.T)  # (n, d)
    grad_s = update_s = 0.0
    for t in range(steps):
        idx = rng.integers(0, tr.n, B)
        t0 = time.perf_counter()
        Xb = XT[idx].T  # (d, B)
        P, H = a.forward(Xb, params)
        grads = a.backward(Xb, tr.y[idx], P, H, params, cfg.lam)
        t1 = time.perf_counter()
        eta = a.cyclic_eta(t, cfg.eta_min, cfg.eta_max, cfg.n_s)
        for k in params:
            params[k] -= eta * grads[k]  # eqs. 10-11
        update_s += time.perf_counter() - t1
        grad_s += t1 - t0
    print(f"m={m}: gather and gradients {1e3 * grad_s / steps:.3f} ms per step, update "
          f"{1e3 * update_s / steps:.3f} ms ({100 * update_s / (grad_s + update_s):.1f}% of the "
          "step)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-wide", action="store_true", help="skip the m=1000 case")
    p.add_argument(
        "--augment", action="store_true", help="only time the augmented epoch against the plain one"
    )
    p.add_argument("--recipe", action="store_true", help="only time Exercise 5's wide recipe "
                   "(m=4096 in the top 512 principal directions) against its floor and torch")
    p.add_argument("--m", type=int, default=4096, help="width for --recipe (default: 4096)")
    p.add_argument("--optimizer", choices=["nesterov", "adam"], default="adam",
                   help="the optimiser for --recipe (default: adam, the recipe's)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size for --recipe (default: the recipe's, settings.Exercise5.batch)")
    return p.parse_args(argv)


def spec_epochs(repeats, skip_wide):
    """The spec's trainer (m=50 on 49,000 images, m=1000 on 10,000) against torch and the
    matrix-product peak, interleaved: one row per width, the m=50 line last."""
    import torch

    # the project's numpy uses both cores through OpenBLAS; give torch the same
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    va = synthetic(1000, rng)
    update_share(synthetic(49000, np.random.default_rng(1)))
    print(f"{'m':>5} {'images':>7} {'ours med/min s':>16} {'torch med/min s':>17} {'ratio':>6} "
          f"{'ours GFLOP/s':>13} {'gemm peak':>10}")
    last = None
    for m, n in [(50, 49000)] + ([] if skip_wide else [(1000, 10000)]):
        tr = synthetic(n, rng)
        ours, theirs, peak = [], [], []
        for _ in range(repeats if m <= 100 else max(1, repeats // 2)):
            ours.append(project_epoch(tr, va, m, 100))
            theirs.append(torch_epoch(tr, m, 100))
            time.sleep(1.0)  # torch's OpenMP workers go to sleep before numpy needs both cores
            peak.append(gemm_gflops())
        (om, on), (tm, tn), (gp, _) = stats(ours), stats(theirs), stats(peak)
        gf = epoch_gflop(n, m, 100) / om
        print(f"{m:>5} {n:>7} {om:>8.3f}/{on:<7.3f} {tm:>8.3f}/{tn:<8.3f} {om / tm:>6.3f} "
              f"{gf:>13.1f} {gp:>10.1f}")
        if m == 50:
            last = (f"epoch_s={om:.3f} torch_s={tm:.3f} ratio={om / tm:.3f} "
                    f"gemm_peak_fraction={gf / gp:.3f}")
    print(last)


def main(argv=None):
    args = parse_args(argv)
    if args.augment:
        return augment_ratio(args.repeats)
    if args.recipe:
        return recipe_ratio(args.repeats, m=args.m, B=args.batch, optimizer=args.optimizer)
    return spec_epochs(args.repeats, args.skip_wide)


if __name__ == "__main__":
    main()
