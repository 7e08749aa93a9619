"""The linear probe: our torch L-BFGS softmax regression vs scikit-learn's LogisticRegression at the same C.

An ImageNet-shaped probe on synthetic features: ``--n`` normalised 512-d training features (a noisy
copy of one random centre per class) in ``--classes`` classes, and a test set of 10 per class. Both
solvers minimise the same objective (mean cross-entropy + ‖W‖²/(2·C·n)); printed side by side: wall
time, iterations, time per iteration, the objective each reached and the test accuracy.

scikit-learn is slow at this size (one thread evaluates its loss): ``--sklearn-n`` fits it on the
first rows only and ``--sklearn-max-iter`` caps its iterations; ours is then also fitted on those
rows with that cap, so one line compares like with like, and the printout says so. Run on one thread
so that the comparison is per core (scikit-learn's loss is single-threaded whatever the setting):

    OMP_NUM_THREADS=1 python benchmarks/bench_linear_probe.py --max-iter 100
    OMP_NUM_THREADS=1 python benchmarks/bench_linear_probe.py --n 100000 --max-iter 20 --sklearn-max-iter 20

A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from starft_pipeline.train.linear_probe import fit_softmax_regression, l2_strength, penalised_objective


def make_features(n: int, n_classes: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=torch.Generator().manual_seed(0)))
    labels = torch.randint(n_classes, (n,), generator=generator)
    offsets = noise * torch.nn.functional.normalize(torch.randn(n, dim, generator=generator))
    return torch.nn.functional.normalize(centres[labels] + offsets), labels


def accuracy(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((torch.addmm(bias, features, weight.T).argmax(1) == labels).float().mean())


def run_ours(features, labels, test, c: float, max_iter: int, device: str) -> dict[str, float]:
    names = [str(k) for k in range(int(labels.max()) + 1)]
    start = time.perf_counter()
    fit = fit_softmax_regression(features, labels, names, c, max_iter, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    head = fit.head
    return {
        "s": seconds,
        "iter": fit.iterations,
        "objective": fit.objective,
        "acc": accuracy(head.weight, head.bias, *test),
    }


def run_sklearn(features, labels, test, c: float, max_iter: int) -> dict[str, float]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=c, max_iter=max_iter).fit(features.numpy(), labels.numpy())
    seconds = time.perf_counter() - start
    weight, bias = torch.tensor(model.coef_, dtype=torch.float32), torch.tensor(model.intercept_, dtype=torch.float32)
    strength = l2_strength(c, len(labels), weight.shape[0])
    objective = float(penalised_objective(weight, bias, features, labels, strength))
    return {"s": seconds, "iter": int(model.n_iter_[0]), "objective": objective, "acc": accuracy(weight, bias, *test)}


def show(name: str, n: int, result: dict[str, float]) -> None:
    per_iter = result["s"] / max(result["iter"], 1)
    print(
        f"{name:<24} {n:>8} {result['s']:>9.1f} {result['iter']:>6} {per_iter:>9.2f} "
        f"{result['objective']:>10.5f} {100 * result['acc']:>8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="training features")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--noise", type=float, default=1.2, help="norm of each feature's offset from its centre")
    parser.add_argument("--c", type=float, default=1.0)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--sklearn-n", type=int, default=None, help="scikit-learn's training rows (default: --n)")
    parser.add_argument("--sklearn-max-iter", type=int, default=None, help="default: --max-iter")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sk_n, sk_iter = args.sklearn_n or args.n, args.sklearn_max_iter or args.max_iter

    features, labels = make_features(args.n, args.classes, args.dim, args.noise, seed=1)
    test = make_features(10 * args.classes, args.classes, args.dim, args.noise, seed=2)
    print(
        f"linear probe: {args.n} x {args.dim} features, {args.classes} classes, C={args.c}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads {torch.get_num_threads()}; "
        f"ours on {args.device}, scikit-learn on the CPU (float64)"
    )
    print(f"{'solver':<24} {'n':>8} {'time s':>9} {'iters':>6} {'s/iter':>9} {'objective':>10} {'test acc':>8}")
    # torch.optim's first optimiser imports torch._dynamo (seconds): paid here, outside the timings.
    run_ours(features[:100], labels[:100] % 2, (test[0][:10], test[1][:10] % 2), args.c, 1, args.device)
    ours = run_ours(features, labels, test, args.c, args.max_iter, args.device)
    show(f"ours (max_iter {args.max_iter})", args.n, ours)
    if args.skip_sklearn:
        return
    sub_features, sub_labels = features[:sk_n], labels[:sk_n]
    if (sk_n, sk_iter) != (args.n, args.max_iter):
        print(
            f"scikit-learn is limited to n={sk_n}, max_iter={sk_iter}; ours again at those, for a like-for-like line:"
        )
        ours = run_ours(sub_features, sub_labels, test, args.c, sk_iter, args.device)
        show(f"ours (max_iter {sk_iter})", sk_n, ours)
    theirs = run_sklearn(sub_features, sub_labels, test, args.c, sk_iter)
    show(f"scikit-learn (max_iter {sk_iter})", sk_n, theirs)
    print(
        f"at n={sk_n}: time ours/sklearn {ours['s'] / theirs['s']:.2f}x, "
        f"objective ours - sklearn {ours['objective'] - theirs['objective']:+.5f}, "
        f"test accuracy ours - sklearn {100 * (ours['acc'] - theirs['acc']):+.2f} points"
    )


if __name__ == "__main__":
    main()
