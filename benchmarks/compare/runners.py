# SPDX-License-Identifier: Apache-2.0
"""One benchmark per model: data, the optimiser of every row, training, evaluation.

Each benchmark trains through the model's own training function
(:func:`models.dynamic_mf.fit`, :func:`models.bernoulli_mf.train_one`,
:func:`models.dwe.train_one`); rows the model does not know are passed in through
their ``optimizer`` hook. After a run the param store holds its final state, which
:meth:`Benchmark.evaluate` reads.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from pyro.optim import SGD, Adagrad, Adam, ExponentialLR, PyroOptim

from benchmarks.compare.alternatives import NO_CLIPPING, TimeDCTAdam, riemannian_optim
from models import bernoulli_mf, dwe, dynamic_mf
from pyro_goldstone.analysis import first_last_cosine
from pyro_goldstone.coupling import Coupling
from pyro_goldstone.data.movielens import load_ratings, preprocess
from pyro_goldstone.optim import GoldstonePyroOptim

__all__ = ["BENCHMARKS", "EXTRA_LR", "GD_CLIP_NORM", "Benchmark"]

logger = logging.getLogger(__name__)

#: Learning rates of rows that a model does not define itself (the models define
#: ``dynamic_mf``: gd / adam / adagrad, ``movielens``: adagrad, ``dwe``: adam): the
#: lowest final loss in sweeps of 150 steps at this benchmark's default sizes (seed 0),
#: listed in the module docstring of :mod:`benchmarks.compare`; DCTAdam without an
#: entry uses the Adam rate of its model.
EXTRA_LR = {
    "dynamic_mf": {"dctadam": 0.1},
    "movielens": {"adam": 0.1, "gd": 0.03, "dctadam": 0.03},
    "dwe": {"adagrad": 0.3, "gd": 0.3},
}
#: Gradient clipping (total norm per parameter) of the plain gradient-descent rows of
#: the sparse models, whose gradients are sums over all ratings or counts.
GD_CLIP_NORM = {"movielens": 1000.0, "dwe": 10.0}


def _goldstone(base, names, coupling, method: str, *, interval, gauge_steps):
    # the paper's first-order update cannot remove reflections; the other methods keep
    # the package's default treatment of reflections
    options = {"reflections": "never"} if method == "taylor" else {}
    return GoldstonePyroOptim(
        base,
        names,
        coupling,
        interval=interval,
        gauge_steps=gauge_steps,
        method=method,
        **options,
    )


def _known_queries(queries, counts) -> list:
    """The word-aging queries that occur in the last bin; the others are logged."""
    known = []
    for query in queries:
        try:
            dwe.check_queries([query], counts)
        except ValueError as error:
            logger.warning("dwe: leaving out the word-aging query: %s", error)
        else:
            known.append(query)
    if not known:
        raise ValueError(
            f"--dwe-vocab: none of the word-aging queries {list(queries)} occurs in "
            "the last bin of this vocabulary"
        )
    return known


class Benchmark:
    """What the comparison needs from one model.

    Subclasses take ``(settings, lr, sizes)``: the options of
    :func:`benchmarks.compare.main`, the learning rates of the rows the model does not
    define (row to rate, :data:`EXTRA_LR` and ``--lr``) and the sizes
    (:data:`benchmarks.compare.DEFAULT_SIZES`; ``None`` keeps the model's default).

    :param argparse.Namespace settings: the options of the comparison.
    :param dict lr: row to learning rate.
    :ivar str name: the model's name in the results.
    :ivar Coupling coupling: the prior's coupling graph.
    :ivar list loc_names: the means that rotate together.
    :ivar dict config: every option used, for the results file.
    """

    name = ""
    #: how the reference prior energy of the 1% threshold is chosen
    reference_rule = (
        "the lowest prior energy over rotations and reflections (the aligned energy) "
        "of the final means of the training runs that fit, those whose final loss is "
        "within 1% of the lowest"
    )

    def __init__(self, settings, lr: dict):
        self.settings = settings
        self.lr = lr
        self.progress = not settings.no_progress

    def train(self, label: str) -> dict:
        """Train one row from a fresh param store and return its run.

        :param str label: the row, one of :data:`benchmarks.compare.report.ROWS`
            except the post-hoc alignment.
        :rtype: dict
        """
        raise NotImplementedError

    def evaluate(self) -> dict:
        """Held-out figures of the means in the param store (none by default).

        :rtype: dict
        """
        return {}

    def reference(self, runs: dict) -> float:
        """The reference prior energy of the 1% threshold (see :attr:`reference_rule`).

        A run that has not fitted can have a low prior energy because its means are
        still small, and a run that has fitted can still hold energy in Goldstone
        modes, so the reference is the lowest aligned energy of the fitted runs (their
        final prior energy where a run did not record the aligned energy).

        :param dict runs: label to run, training runs only.
        :rtype: float
        """
        best = min(run["final_loss"] for run in runs.values())
        fitted = [
            run for run in runs.values() if run["final_loss"] - best <= 0.01 * abs(best)
        ]
        return min(run.get("aligned_energy", run["prior_energy"])[-1] for run in fitted)

    def riemannian(self, base, coupling, interval: int):
        """``base`` with Riemannian gauge phases every ``interval`` steps (see
        :func:`~benchmarks.compare.alternatives.riemannian_optim`).

        :param base: the base Pyro optimiser.
        :param Coupling coupling: the prior's coupling graph.
        :param int interval: base steps between phases.
        :rtype: GoldstonePyroOptim or None
        """
        return riemannian_optim(
            base,
            self.loc_names,
            coupling,
            interval=interval,
            num_steps=self.settings.riemannian_steps,
            lr=self.settings.riemannian_lr,
        )

    def gauge_row(self, label: str, base, model, args):
        """The optimiser of a Riemannian or Goldstone row of a sparse model.

        :param str label: ``"riemannian-adam"`` or ``"goldstone-<method>"``.
        :param base: the base Pyro optimiser.
        :param model: the model object, with ``loc_names`` and ``coupling``.
        :param args: the model command's options (``interval``, ``gauge_steps``).
        """
        if label == "riemannian-adam":
            return self.riemannian(base, model.coupling, args.interval)
        return _goldstone(
            base,
            model.loc_names,
            model.coupling,
            label.split("-", 1)[1],
            interval=args.interval,
            gauge_steps=args.gauge_steps,
        )


class DynamicMF(Benchmark):
    """The dense dynamic Gaussian factorisation on synthetic data (SPEC 4.1)."""

    name = "dynamic_mf"

    def __init__(self, settings, lr: dict, sizes: dict):
        super().__init__(settings, lr)
        config = copy.deepcopy(dynamic_mf.DEFAULTS)
        if settings.smoke:
            config.update(dynamic_mf.SMOKE)
        self.init = sizes.pop("init")
        config.update({key: value for key, value in sizes.items() if value is not None})
        config["lr"].update(lr)
        self.config = dict(config, init=self.init, seed=settings.seed)
        self.Y = dynamic_mf._data(config, settings.seed, torch.device("cpu"))
        self.coupling = Coupling.chain(config["num_time_steps"], config["strength"])
        self.loc_names = ["U_loc", "V_loc"]
        self.num_steps = config["num_steps"]
        factor = config["reference_factor"]
        self.reference_rule = (
            f"a long Goldstone-Procrustes run ({factor} x {self.num_steps} steps), "
            "then the exact minimum over O(d) rotations of its means "
            "(models.dynamic_mf.reference_energy)"
        )

    def _optimizer(self, label, config, coupling):
        if label == "dctadam":
            gamma = config["lr_decay"] ** (1.0 / config["num_steps"])
            options = {
                "lr": config["lr"].get("dctadam", config["lr"]["adam"]),
                "num_steps": config["num_time_steps"],
                "clip_norm": NO_CLIPPING,
            }
            return ExponentialLR(
                {"optimizer": TimeDCTAdam, "optim_args": options, "gamma": gamma}
            )
        base = dynamic_mf.make_optimizer(config["goldstone_base"], config, coupling)
        return self.riemannian(base, coupling, config["interval"])

    def train(self, label: str) -> dict:
        hook = None if label in dynamic_mf.OPTIMIZERS else self._optimizer
        run = dynamic_mf.fit(
            label,
            self.Y,
            self.init,
            self.config,
            seed=self.settings.seed,
            progress=self.progress,
            optimizer=hook,
        )
        run.pop("snapshots")
        run.pop("means")
        return run

    def reference(self, runs: dict) -> float:
        reference, spread = dynamic_mf.reference_energy(
            self.Y, self.init, self.config, seed=self.settings.seed, progress=False
        )
        self.config["reference_relative_spread"] = spread
        return reference


class MovieLens(Benchmark):
    """The sparse dynamic Bernoulli factorisation of real MovieLens ratings (SPEC 4.2)."""

    name = "movielens"
    #: rows that :func:`models.bernoulli_mf.train_one` builds itself
    native = ("adagrad", "goldstone-natural_gradient", "goldstone-procrustes")

    def __init__(self, settings, lr: dict, sizes: dict):
        super().__init__(settings, lr)
        argv = ["--seed", str(settings.seed), "--no-progress"]
        for key in ("num_steps", "num_bins", "dim", "batch_size", "record_every"):
            argv += [f"--{key.replace('_', '-')}", str(sizes[key])]
        if "adagrad" in lr:
            argv += ["--lr", str(lr["adagrad"])]
        self.args = bernoulli_mf._parser().parse_args(argv)
        bernoulli_mf._check_args(self.args)
        ratings = load_ratings(self.args.ratings)
        if sizes["users"] is not None:
            ratings = bernoulli_mf.first_users(ratings, sizes["users"])
        self.data = preprocess(
            ratings,
            num_bins=self.args.num_bins,
            time_cut=self.args.time_cut,
            seed=self.args.seed,
        )
        self.coupling = Coupling.chain(self.data.num_bins, self.args.strength)
        self.loc_names = ["U_loc", "V_loc"]
        self.num_steps = self.args.num_steps
        self.config = dict(
            vars(self.args),
            users=sizes["users"],
            lr=dict(self.lr, adagrad=self.args.lr),
            gd_clip_norm=GD_CLIP_NORM["movielens"],
            num_users=self.data.num_users,
            num_items=self.data.num_items,
            num_train=len(self.data.train),
            num_test=len(self.data.test),
        )

    def _model(self) -> bernoulli_mf.BernoulliMF:
        args = self.args
        return bernoulli_mf.BernoulliMF(
            self.data,
            dim=args.dim,
            strength=args.strength,
            sigma0=args.sigma0,
            shared_init=args.init == "shared",
            device=args.device,
        )

    def _optimizer(self, label: str):
        args, T = self.args, self.data.num_bins

        def build(model):
            if label == "adam":
                return Adam({"lr": self.lr["adam"]})
            if label == "gd":
                return SGD(
                    {"lr": self.lr["gd"]}, {"clip_norm": GD_CLIP_NORM[self.name]}
                )
            if label == "dctadam":
                lr = self.lr.get("dctadam", self.lr["adam"])
                options = {"lr": lr, "num_steps": T}
                return PyroOptim(TimeDCTAdam, dict(options, clip_norm=NO_CLIPPING))
            return self.gauge_row(label, Adagrad({"lr": args.lr}), model, args)

        return build

    def train(self, label: str) -> dict:
        hook = None if label in self.native else self._optimizer(label)
        return bernoulli_mf.train_one(
            self.data, label, self.args, progress=self.progress, optimizer=hook
        )

    def evaluate(self) -> dict:
        test = self._model().evaluate("test")
        return {"test_loglik": test["loglik"], "test_auc": test["auc"]}


class WordEmbeddings(Benchmark):
    """Dynamic word embeddings of the State of the Union corpus (SPEC 4.3)."""

    name = "dwe"
    native = (dwe.BASELINE, dwe.GOLDSTONE)

    def __init__(self, settings, lr: dict, sizes: dict):
        super().__init__(settings, lr)
        argv = ["--seed", str(settings.seed), "--no-progress"]
        argv += ["--smoke"] if settings.smoke else []
        for key, value in sizes.items():
            if value is not None:
                argv += [f"--{key.replace('_', '-')}", str(value)]
        if "adam" in lr:
            argv += ["--lr", str(lr["adam"]), "--lr-final", str(lr["adam"] / 10)]
        self.args = dwe._complete(dwe._parser().parse_args(argv))
        self.counts = dwe.load_counts(self.args)
        self.args.queries = _known_queries(self.args.queries, self.counts)
        self.loc_names = ["U_loc", "V_loc"]
        self.num_steps = self.args.num_steps
        self.model = None
        self.config = dict(
            vars(self.args),
            lr=dict(self.lr, adam=self.args.lr),
            gd_clip_norm=GD_CLIP_NORM["dwe"],
            bins=self.counts.bins.labels,
        )

    def _optimizer(self, label: str):
        args = self.args

        def build(model):
            if label == "adagrad":
                return Adagrad({"lr": self.lr["adagrad"]})
            if label == "gd":
                return SGD(
                    {"lr": self.lr["gd"]}, {"clip_norm": GD_CLIP_NORM[self.name]}
                )
            if label == "dctadam":
                decay = (args.lr_final / args.lr) ** (1.0 / args.num_steps)
                lr = self.lr.get("dctadam", args.lr)
                options = {"lr": lr, "lrd": decay, "num_steps": model.num_steps}
                return PyroOptim(TimeDCTAdam, dict(options, clip_norm=NO_CLIPPING))
            base = dwe._optimiser(model, dwe.BASELINE, args)
            return self.gauge_row(label, base, model, args)

        return build

    @property
    def coupling(self) -> Coupling:
        """The OU prior's coupling graph (of the last model trained)."""
        return self.model.coupling

    def train(self, label: str) -> dict:
        hook = None if label in self.native else self._optimizer(label)
        run, self.model = dwe.train_one(
            self.counts, label, self.args, progress=self.progress, optimizer=hook
        )
        run.pop("first_last_cosine")
        return run

    def evaluate(self) -> dict:
        U, _ = self.model.means()
        present = torch.as_tensor(self.counts.present)
        cosines = first_last_cosine(U.cpu(), present=present)
        return {
            "test_loglik": self.model.held_out_loglik(),
            "median_first_last_cosine": float(np.nanmedian(cosines.numpy())),
            "aging": dwe.aging_table(U, self.counts, self.args.queries),
        }


BENCHMARKS = {
    "dynamic_mf": DynamicMF,
    "movielens": MovieLens,
    "dwe": WordEmbeddings,
}
