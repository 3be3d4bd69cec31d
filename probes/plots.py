"""Seaborn figures for the probes. Each returns a matplotlib Figure (save it, or display it in a notebook)."""

from __future__ import annotations

import pandas as pd

from toolkit.report import plot_grid, plt, sns

__all__ = ["plot_separability", "plot_spectrum", "plot_rank_table", "plot_gates", "plot_grid", "plot_cosines"]


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
