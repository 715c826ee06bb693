"""The paper's Figures 1–7 (docs/math.md §7) from a Reproduction's cells.

Each figure reads the cells `experiments.cells(name)` lists; `figure(name, rep)`
trains what is missing, draws, and writes OUT/name.png and OUT/name.pdf.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .experiments import BASELINES, CATEGORICAL, DEPTHS, LABEL, SETTINGS, UNIFORM, VARIANTS, cells
from .inspection import heatmap_figure
from .noise import as_noise
from .paper import paper_value
from .plotting import pyplot, save

COLORS = {"gdpp": "tab:green", "diag": "tab:blue", "full": "tab:red", "constrr": "0.5", "adarr": "tab:orange",
          "tunedrr": "tab:purple", "oracle": "k"}


def _title(fig, rep, text: str) -> None:
    fig.suptitle(f"{text} (budget {rep.budget})")


def fig1(rep):
    """Adjusted loss vs number of layers for each noise setting: ours (solid), the
    paper's (dotted), and the baselines (horizontal lines)."""
    base = rep.baselines(SETTINGS)
    fig, axes = pyplot().subplots(2, 5, figsize=(17, 6.5), sharex=True)
    for ax, s in zip(axes.flat, SETTINGS):
        for m in VARIANTS:
            ours = [rep.metrics[(m, L, s)]["adjusted_loss"] for L in DEPTHS]
            ax.plot(DEPTHS, ours, "o-", color=COLORS[m], label=f"{LABEL[m]} (ours)", ms=3)
            ax.plot(DEPTHS, [paper_value(m, s, L) for L in DEPTHS], ":", color=COLORS[m], label=f"{LABEL[m]} (paper)")
        for b in BASELINES:
            if base[s][b] > 0:
                ax.axhline(base[s][b], color=COLORS[b], lw=1, ls="--", label=LABEL[b])
        ax.set_yscale("log")
        ax.set_ylim(top=5)  # a broken cell (non-finite or huge) leaves the panel, it does not squash it
        ax.set_title(s)
        ax.set_xlabel("layers")
    axes[0, 0].set_ylabel("adjusted loss")
    axes[1, 0].set_ylabel("adjusted loss")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    _title(fig, rep, "Figure 1: adjusted loss vs depth")
    return fig


def _by_training_noise(ax, rep, m: str, settings, cmap) -> None:
    """7-layer models of variant m, one line per training noise setting."""
    sigmas = rep.sigma_grid(max(as_noise(s).sigma_max for s in settings))
    for i, s in enumerate(settings):
        color = cmap(i / max(1, len(settings) - 1))
        ax.plot(sigmas, rep.profile((m, 7, s), sigmas)[:, -1], color=color, label=f"trained on {s}")
        ax.axvline(as_noise(s).sigma_max, color=color, lw=0.5, ls=":")
    ax.set_title(f"{LABEL[m]}, 7 layers, by training noise")


def _by_depth(ax, rep, m: str, setting: str, cmap) -> None:
    """Models of variant m trained on `setting`, one line per depth 2..7, and ADARR, TUNEDRR."""
    sigmas = rep.sigma_grid(as_noise(setting).sigma_max)
    for L in range(2, 8):
        ax.plot(sigmas, rep.profile((m, L, setting), sigmas)[:, -1], color=cmap((L - 2) / 5), label=f"L = {L}")
    base = rep.baseline_profiles(setting, sigmas)
    for b in ("adarr", "tunedrr"):
        ax.plot(sigmas, base[b], "--", color=COLORS[b], label=LABEL[b])
    ax.set_title(f"{LABEL[m]} trained on {setting}, by depth")


def _profile_figure(rep, settings, sweep_setting: str, title: str):
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), layout="constrained")
    cmap = plt.get_cmap("viridis")
    for row, m in enumerate(("diag", "full")):
        _by_training_noise(axes[row, 0], rep, m, settings, cmap)
        _by_depth(axes[row, 1], rep, m, sweep_setting, cmap)
        for ax in axes[row]:
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 10)  # σ = 0 baselines sit at ~1e-12; blow-ups leave the panel
            ax.set_xlabel("σ of the evaluation sequences")
            ax.set_ylabel("adjusted loss")
            ax.legend(fontsize=7)
    _title(fig, rep, title)
    return fig


def fig2(rep):
    """Per-variance profiles, uniform noise: 7-layer models by σ_max, and by depth on U(0, 5)."""
    return _profile_figure(rep, UNIFORM, "uniform:5", "Figure 2: per-variance profiles, uniform noise")


def fig3(rep):
    """Per-variance profiles, categorical noise: 7-layer models by setting, and by depth on {1,3,5}."""
    return _profile_figure(rep, CATEGORICAL, "categorical:1,3,5", "Figure 3: per-variance profiles, categorical noise")


def fig4(rep):
    """Heat maps of the learned Q^l and P^l of a 4-layer FULL model trained on {1,3}."""
    return heatmap_figure(rep.params(("full", 4, "categorical:1,3")),
                          f"Figure 4: FULL, 4 layers, trained on categorical {{1,3}} (budget {rep.budget})")


def fig5(rep):
    """Per-layer profile of 7-layer models trained on U(0,5): mean and spread over seeds."""
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    layers = np.arange(0, 8)
    for m in VARIANTS:
        prof = rep.seed_layer_profile((m, 7, "uniform:5"))
        k = prof.shape[0]
        ax.plot(layers, prof.mean(0), "o-", color=COLORS[m], label=f"{LABEL[m]} ({k} seed{'s' if k > 1 else ''})")
        ax.fill_between(layers, prof.min(0), prof.max(0), color=COLORS[m], alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("layer l (prediction <w^l, x>)")
    ax.set_ylabel("adjusted loss")
    ax.legend()
    ax.set_title(f"Figure 5: per-layer profile, 7-layer models on U(0, 5) (budget {rep.budget})")
    return fig


def _against_sigma(ax) -> None:
    ax.set_xlabel("σ of the evaluation sequences")
    ax.axvline(5.0, color="0.7", lw=0.5)


def fig6(rep):
    """Unadjusted loss vs σ of the 7-layer models trained on U(0,5) and the baselines."""
    sigmas = rep.sigma_grid(5.0)
    base = rep.baseline_profiles("uniform:5", sigmas)
    oracle = base["oracle_loss"]
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for m in VARIANTS:
        ax.plot(sigmas, rep.profile((m, 7, "uniform:5"), sigmas)[:, -1] + oracle, color=COLORS[m],
                label=f"{LABEL[m]}-7")
    for b in BASELINES:
        ax.plot(sigmas, base[b] + oracle, "--", color=COLORS[b], label=LABEL[b])
    ax.plot(sigmas, oracle, "k:", label=LABEL["oracle"])
    _against_sigma(ax)
    ax.set_ylim(0, 1.5 * np.nanmax(base["tunedrr"] + oracle))
    ax.set_ylabel("loss (unadjusted)")
    ax.legend(fontsize=8)
    ax.set_title(f"Figure 6: loss vs σ, trained on U(0, 5) (budget {rep.budget})")
    return fig


def fig7(rep):
    """Per-layer per-variance profiles of the 7-layer models trained on U(0,5)."""
    plt = pyplot()
    sigmas = rep.sigma_grid(5.0)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    for ax, m in zip(axes, VARIANTS):
        prof = rep.profile((m, 7, "uniform:5"), sigmas)
        for l in range(1, 8):
            ax.plot(sigmas, prof[:, l], color=cmap((l - 1) / 6), label=f"layer {l}")
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 10)
        ax.set_title(f"{LABEL[m]}-7")
        _against_sigma(ax)
    axes[0].set_ylabel("adjusted loss")
    axes[-1].legend(fontsize=7)
    _title(fig, rep, "Figure 7: per-layer per-variance profiles, U(0, 5)")
    return fig


_DRAW = {"fig1": fig1, "fig2": fig2, "fig3": fig3, "fig4": fig4, "fig5": fig5, "fig6": fig6, "fig7": fig7}


def figure(name: str, rep) -> list[Path]:
    """Train the cells figure `name` reads, draw it, and write its PNG and PDF."""
    rep.train(cells(name))
    return save(_DRAW[name](rep), rep.out, name)


# ---------------------------------------------------------------------- a sweep of your own


def against(rows: list[dict], axis: str, others: list[str], title: str):
    """Adjusted loss (± s.e.) against the values of `axis`, one line per combination of
    the `others` axes; numbers on a numeric scale, anything else (noise settings) in
    the order of the rows."""
    plt = pyplot()
    values = list(dict.fromkeys(r[axis] for r in rows))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = {v: (v if numeric else i) for i, v in enumerate(values)}
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        lines.setdefault(tuple(r[o] for o in others), []).append(r)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for combo, members in lines.items():
        label = ", ".join(f"{o}={v}" for o, v in zip(others, combo)) or "adjusted loss"
        ax.errorbar([x[r[axis]] for r in members], [r["adjusted_loss"] for r in members],
                    yerr=[r["sem"] for r in members], marker="o", ms=4, capsize=2, label=label)
    if not numeric:
        ax.set_xticks(range(len(values)), [str(v) for v in values], rotation=20)
    if all(r["adjusted_loss"] > 0 for r in rows):
        ax.set_yscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel("adjusted loss")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def sweep_figures(rows: list[dict], axes: list[str], out: Path, title: str) -> list[Path]:
    """One figure per axis of two or more values: the adjusted loss against it."""
    written = []
    for axis in axes:
        if len({repr(r[axis]) for r in rows}) > 1:
            others = [a for a in axes if a != axis]
            written += save(against(rows, axis, others, f"{title}: adjusted loss against {axis}"), out,
                            f"against-{axis}")
    return written
