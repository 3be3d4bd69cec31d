"""Seaborn figures for the probes. Each returns a matplotlib Figure (save it, or display it in a notebook)."""

from __future__ import annotations

import pandas as pd

from toolkit.report import plot_grid, plt, sns

__all__ = ["plot_separability", "plot_spectrum", "plot_rank_table", "plot_gates", "plot_gate_groups", "plot_grid", "plot_cosines",
           "plot_leakage_grid", "plot_epsilon_sweep"]


def plot_separability(table: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6, 3.4))
    long = table.melt(id_vars="layer", value_vars=["auroc", "projection_accuracy", "probe_accuracy"])
    sns.lineplot(long, x="layer", y="value", hue="variable", marker="o", ax=ax)
    ax.set(ylim=(0.4, 1.02), title="separability per layer", ylabel="")
    return fig


def plot_cosines(cos: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    sns.heatmap(cos, vmin=-1, vmax=1, cmap="vlag", annot=len(cos) <= 10, fmt=".2f", ax=ax)
    ax.set(title="cosine between layers' directions")
    return fig


def plot_spectrum(spec: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.lineplot(spec.assign(share=spec.energy_share.clip(lower=1e-12)), x="index", y="share", hue="layer",
                 palette="viridis", ax=ax)
    ax.set(yscale="log", title="retain eigen-spectrum (energy share, ascending)", xlabel="eigen-index")
    return fig


def plot_rank_table(table: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    sns.lineplot(table, x="layer", y="k", hue="policy", marker="o", ax=axes[0])
    axes[0].set(title="null-space rank k per policy")
    if "forget_share_in_null" in table:
        sns.lineplot(table, x="layer", y="forget_share_in_null", hue="policy", marker="o", ax=axes[1], legend=False)
        axes[1].set(title="forget energy inside the null space", ylim=(0, 1))
    fig.tight_layout()
    return fig


def plot_gates(gates: pd.DataFrame, title: str = "gate h.w on forget vs retain"):
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.histplot(gates, x="gate", hue="set", bins=40, stat="density", common_norm=False, ax=ax)
    ax.set(title=title)
    return fig


def plot_gate_groups(gates: pd.DataFrame):
    """Gate distribution per group of people, one panel per layer (from :func:`probes.gate_distribution`)."""
    layers = sorted(gates.layer.unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.4), squeeze=False, sharey=True)
    for ax, layer in zip(axes[0], layers):
        sns.boxplot(gates[gates.layer == layer], x="gate", y="group", ax=ax, fliersize=1.5)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set(title=f"layer {layer}", ylabel="")
    fig.suptitle("eraser gate h.w at the last prompt token, per group of people")
    fig.tight_layout()
    return fig


def plot_leakage_grid(grid: pd.DataFrame):
    """Heatmaps layer x lambda of the answer rate (forget: leakage; retain: recall) from a leakage grid."""
    g = grid[grid.layer >= 0]
    sets = list(dict.fromkeys(g.set))
    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 3.2), squeeze=False)
    for ax, name in zip(axes[0], sets):
        table = g[g.set == name].pivot(index="layer", columns="lam", values="answer_rate")
        sns.heatmap(table, vmin=0, vmax=1, cmap="rocket_r" if name == "forget" else "crest", annot=True, fmt=".2f",
                    ax=ax)
        ax.set(title=f"{name}: answers containing the fact")
    fig.tight_layout()
    return fig


def plot_epsilon_sweep(sweep: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    sns.lineplot(sweep, x="eps_255", y="success_rate", marker="o", ax=axes[0])
    axes[0].set(xscale="log", ylim=(-0.02, 1.02), xlabel="eps (x/255)", title="PGD success (refusal flipped)")
    long = sweep.melt(id_vars="eps_255", value_vars=["loss_clean", "loss_adversarial"])
    sns.lineplot(long, x="eps_255", y="value", hue="variable", marker="o", ax=axes[1])
    axes[1].set(xscale="log", xlabel="eps (x/255)", ylabel="target NLL", title="target loss")
    fig.tight_layout()
    return fig


def plot_gate_roc(curves: pd.DataFrame):
    """ROC per gate kind, one panel per layer (from :func:`probes.gate_roc.gate_roc`); false positives on a
    log axis, where the operating points (2-5%) lie."""
    layers = sorted(curves.layer.unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.3), squeeze=False, sharey=True)
    for ax, layer in zip(axes[0], layers):
        c = curves[(curves.layer == layer) & (curves.fpr > 0)]
        sns.lineplot(c, x="fpr", y="tpr", hue="gate", ax=ax, legend=layer == layers[-1], errorbar=None,
                     estimator=None, sort=False)
        ax.axvline(0.05, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", xlim=(1e-3, 1), ylim=(0, 1.02), title=f"layer {layer}",
               xlabel="fires on unseen validation people", ylabel="fires on the stand-ins' questions")
    if len(layers):
        axes[0][-1].legend(title="gate", loc="lower right", fontsize=8)
    fig.suptitle("gate kinds on the rehearsal (validation people only)")
    fig.tight_layout()
    return fig
