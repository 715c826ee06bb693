"""TrainConfig: everything that defines one training run, checked on construction.

Fields marked DATA are data of the training state, not of the compiled step
(the noise setting, the seeds, the start, the importance sampling, the sizes of
the held-out sets): configs that differ only in them share `config.program` and
train side by side in one vmapped call. A field is part of the program unless
its definition says otherwise, so a new field can only split groups, never mix
two programs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property

from .engine import noise_atoms
from .params import canonical_variant, check_size
from .noise import as_noise
from .paper import PAPER_D, PAPER_N
from .selection import TAIL_KEEP
from .tasks import positive_int

OBJECTIVES = ("query_averaged", "sampled_query")
POLISH_SCORES = ("tail", "own")  # what ranks the polish's bank (lticl.polish)

# n × (d + 1) numbers per sequence at most: evaluations draw sequences in chunks of
# tasks.CHUNK, and this keeps a chunk's context near 2 GiB in float32.
MAX_CONTEXT = 2**16
INITS = ("gd", "precondition", "random")


def parse_n(text: str) -> tuple[int, int]:
    """"20" -> (20, 20); "10..100" -> (10, 100): the smallest and largest context length."""
    parts = str(text).strip().split("..")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or not 1 <= low <= high:
        raise ValueError(f"n must be a positive integer or a range a..b with 1 <= a <= b, got {text!r}")
    return low, high


def _data(default, on=None):
    """A DATA field. `on`: the field is a fraction that switches work on or off; the
    program keeps only whether it is on, holding `on` where it is (so the compiled
    step skips the work where it is off)."""
    return field(default=default, metadata={"data": True, "on": on})


@dataclass(frozen=True)
class TrainConfig:
    variant: str
    layers: int
    noise: str = _data("uniform:5")
    heads: int = 1
    d: int = PAPER_D
    # Context points per sequence; "a..b" (or n=b with n_min=a) trains on a range:
    # each training sequence has a number of points drawn uniformly from a..b, padded
    # to b and masked (model.context). Validation, tail and evaluation sets use n = b.
    n: int = PAPER_N
    n_min: int = 0  # 0: every sequence has n points
    # Attention normalised by the context length, G/n in place of G (Params.normalised).
    normalised: bool = False
    steps: int = 2000
    batch: int = 2048
    lr: float = 3e-3  # peak of warmup + cosine decay
    warmup: int = 100
    final_lr_fraction: float = 0.01
    clip: float = 1.0  # global gradient norm
    # "gd": GD layers plus noise (model.gd_init); "precondition": preconditioning
    # layers, then the big GD step (model.precondition_init); "random": N(0, init_scale²)
    init: str = _data("gd")
    # Small, so that no initial model overflows float32 on rare large sequences
    # (an overflow there fails every batch that holds one).
    init_scale: float = _data(1e-3)
    objective: str = "query_averaged"
    # Importance sampling of training batches: this fraction of each batch draws
    # w ~ N(0, wide_scale²·I), and the loss is reweighted to stay unbiased
    # (tasks.mixture_tasks).
    wide_fraction: float = _data(0.0, on=0.5)
    wide_scale: float = _data(2.0)
    # Importance sampling of the spectrum: this fraction of each batch draws its context
    # inputs with covariance I + (spike_scale² − 1)·u uᵀ along a random direction u, so
    # that training meets the large λ_max(XᵀX/n) where low-noise models blow up, far
    # beyond the largest of a million plain sequences; reweighted to stay unbiased
    # (tasks.mixture_tasks).
    spike_fraction: float = _data(0.0, on=0.5)
    spike_scale: float = _data(2.0)
    # Stratified batches (tasks.stratified_batch): this fraction of each batch is
    # drawn from the `stratum` sequences with the largest tail score among
    # `stratum_pool` fresh ones of the training stream, the rest fresh from below
    # that score, each part weighted by its probability, so the loss stays unbiased.
    # The bank's size is part of the program; 0 turns stratification off.
    stratum: int = 0
    stratum_fraction: float = _data(0.0)
    stratum_pool: int = _data(1_000_000)
    seed: int = _data(0)
    seeds: int = _data(1)  # trained in parallel; the best on validation data is kept
    # Seeds first_seed … first_seed+seeds−1: a later run of new seeds for a trained
    # config (its seeds 0 … first_seed−1), with the same data, validation and tail sets.
    first_seed: int = _data(0)
    # A continuation: the name of a finished run in the same runs folder whose final
    # seeds are this run's start, in place of `init`, with a fresh optimiser state and
    # schedule; its seeds first_seed … give it data streams of its own; each seed keeps
    # its start where training on did not help (train.train_group's origins). "" for none.
    # (rundir.prepare loads the seeds.)
    continues: str = _data("")
    # Where a continuation's parent is one layer shallower: False adds a GD layer on top
    # of it; True inserts below its last layer a copy of the layer under that one, P and
    # Q scaled by GROWN_STEP (engine.grown).
    grow_below: bool = _data(False)
    chunk: int = 100  # steps per compiled call (and per checkpoint and progress report)
    lr_backoff: float = 0.5
    # A batch loss above explode × d/2 (d/2: the loss of predicting 0) is a failed step.
    # Kept high: skipping finite spikes stops a deep model from learning away from a
    # heavy tail (docs/training.md).
    explode: float = 1e8
    patience: int = 10  # failed steps in a row that count as divergence
    max_recoveries: int = 20  # a seed rolled back this often has failed
    validation_sequences: int = _data(20_000)
    evaluation_sequences: int = _data(100_000)
    # Seeds are also checked on the sequences most likely to blow a model up among
    # this many fresh ones (selection.tail_set): a tail that a mean over the
    # validation set hides shows there, as it would on this many evaluation sequences.
    tail_sequences: int = _data(1_000_000)
    # A seed's tail set also holds the TAIL_KEEP sequences on which the seed itself does
    # worst among the first this many of the same fresh ones (selection.tail_evaluations):
    # FULL is not rotation-equivariant, and can blow up along a direction of its own
    # that no score of the data alone ranks high. 0 for none.
    screen_sequences: int = _data(0)
    # After the Adam steps, this many L-BFGS iterations on a fixed sample of the
    # stratified objective (lticl.polish): the `stratum` sequences of largest tail score
    # among `polish_pool` fresh ones, and `polish_sequences` fresh ones below them. It
    # takes down the rare sequences a model blows up on, which Adam's fixed steps jump
    # across. Ranked by the tail score it needs the stratum (stratum > 0); 0 for none.
    polish: int = _data(0)
    polish_pool: int = _data(4_000_000)
    polish_sequences: int = _data(20_000)
    # What ranks the polish's bank: "tail", the tail score (the `stratum` top of the
    # pool); "own", each model's own loss (its TAIL_KEEP worst of the pool), for FULL,
    # which blows up along directions of its own (see screen_sequences).
    polish_score: str = _data("tail")

    def __post_init__(self):
        object.__setattr__(self, "variant", canonical_variant(self.variant))
        if isinstance(self.n, str):
            n_min, n = parse_n(self.n)
            object.__setattr__(self, "n", n)
            object.__setattr__(self, "n_min", n_min)  # 0 below where n_min == n
        object.__setattr__(self, "noise", as_noise(self.noise).spec)
        noise_atoms(self.noise)  # raises for noise that training cannot draw
        for name in ("layers", "heads", "d", "n", "steps", "batch", "seeds", "chunk", "patience", "max_recoveries",
                     "validation_sequences", "evaluation_sequences", "tail_sequences"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name))
        object.__setattr__(self, "first_seed", positive_int(self.first_seed, "first_seed", minimum=0))
        object.__setattr__(self, "screen_sequences", positive_int(self.screen_sequences, "screen_sequences", minimum=0))
        if self.screen_sequences > self.tail_sequences:
            raise ValueError(f"screen_sequences ({self.screen_sequences:,}) must be at most tail_sequences "
                             f"({self.tail_sequences:,}): the screen is the first of the tail set's fresh sequences")
        object.__setattr__(self, "n_min", positive_int(self.n_min, "n_min", minimum=0))
        object.__setattr__(self, "polish", positive_int(self.polish, "polish", minimum=0))
        for name in ("polish_pool", "polish_sequences"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name))
        if not isinstance(self.continues, str) or any(c in self.continues for c in "/\\") or \
                self.continues in (".", ".."):
            raise ValueError(f"continues must be the name of a run directory, got {self.continues!r}")
        if self.n_min > self.n:
            raise ValueError(f"n_min ({self.n_min}) must be at most n ({self.n})")
        if self.n_min == self.n:
            object.__setattr__(self, "n_min", 0)
        for name in ("normalised", "grow_below"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.n_min and self.stratum:
            raise ValueError("stratified batches need one context length; set stratum to 0 or n to one value")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; expected one of {', '.join(OBJECTIVES)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; expected one of {', '.join(INITS)}")
        check_size(self.layers, self.heads, self.d)
        if self.n * (self.d + 1) > MAX_CONTEXT:
            raise ValueError(f"n × (d + 1) = {self.n * (self.d + 1):,} numbers per sequence is above lticl's limit "
                             f"of {MAX_CONTEXT:,}")
        for name in ("lr", "clip", "explode", "init_scale", "wide_scale", "spike_scale",
                     "final_lr_fraction"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        for name in ("lr", "clip", "explode"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("wide", "spike"):
            fraction, scale = getattr(self, f"{name}_fraction"), getattr(self, f"{name}_scale")
            if not 0 <= fraction < 1 or not scale >= 1:
                raise ValueError(f"{name}_fraction must be in [0, 1) and {name}_scale >= 1, got {fraction} and {scale}")
        if self.spike_fraction and self.wide_fraction:
            raise ValueError("wide and spike importance sampling are exclusive; set one of wide_fraction and "
                             "spike_fraction to 0")
        object.__setattr__(self, "stratum", positive_int(self.stratum, "stratum", minimum=0))
        object.__setattr__(self, "stratum_pool", positive_int(self.stratum_pool, "stratum_pool"))
        if self.stratum_fraction != 0 and not (self.stratum and 1 / self.batch <= self.stratum_fraction < 1):
            raise ValueError(f"stratum_fraction must be 0, or in [1/batch, 1) with stratum > 0, got "
                             f"{self.stratum_fraction} with stratum {self.stratum}")
        if self.stratum > self.stratum_pool // 2:
            raise ValueError(f"stratum ({self.stratum}) must be at most half of stratum_pool ({self.stratum_pool})")
        if self.polish_score not in POLISH_SCORES:
            raise ValueError(f"unknown polish_score {self.polish_score!r}; expected one of {', '.join(POLISH_SCORES)}")
        if self.polish and self.polish_score == "own" and self.polish_pool < 2 * TAIL_KEEP:
            raise ValueError(f"polish_pool must be at least {2 * TAIL_KEEP:,} with polish_score own, got "
                             f"{self.polish_pool:,}")
        if self.polish and self.polish_score == "tail" and not (self.stratum and self.stratum <= self.polish_pool // 2):
            raise ValueError(f"polish needs the stratum: stratum > 0 and at most half of polish_pool "
                             f"({self.polish_pool:,}), got stratum {self.stratum}")
        if self.polish and self.objective != "query_averaged":
            raise ValueError(f"polish minimises the query-averaged loss; set objective to query_averaged or "
                             f"polish to 0, got {self.objective!r}")
        if self.stratum_fraction and self.wide_fraction:
            raise ValueError("stratified batches and wide importance sampling are exclusive; set one of "
                             "stratum_fraction and wide_fraction to 0")
        if not 0 < self.lr_backoff < 1:
            raise ValueError(f"lr_backoff must be in (0, 1), got {self.lr_backoff}")
        if self.warmup < 0 or not 0 <= self.final_lr_fraction <= 1:
            raise ValueError("warmup must be >= 0 and final_lr_fraction in [0, 1]")

    @property
    def context_lengths(self) -> tuple[int, int]:
        """The smallest and largest number of context points of a training sequence."""
        return (self.n_min or self.n), self.n

    def to_dict(self) -> dict:
        return asdict(self)

    @cached_property
    def program(self) -> "TrainConfig":
        """What the compiled training step depends on: this config with every DATA
        field at its default, so that configs differing only there share one program;
        a switch (`_data(on=…)`) keeps whether it is on."""
        def kept(f):
            return f.metadata["on"] if f.metadata["on"] is not None and getattr(self, f.name) else f.default
        return replace(self, **{f.name: kept(f) for f in fields(self) if f.metadata.get("data")})
