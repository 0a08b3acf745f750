"""Plot a plan: per-layer compute time on each device and the bytes each cut would move, with
the chosen cuts marked (``tvmsplit plan --plot out.png``). matplotlib is imported lazily."""
from __future__ import annotations

from pathlib import Path


def plot_plan(result, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = result.graph
    names = [layer.name for layer in g.layers]
    x = range(len(names))
    table = dict(zip(result.plan_costs.layers, result.plan_costs.compute_ms))
    fig, (ax_t, ax_b) = plt.subplots(2, 1, figsize=(max(8, len(names) * 0.35), 7), sharex=True)
    for d, device in enumerate(result.devices):
        ax_t.bar([i + d * 0.8 / len(result.devices) for i in x], [table[n][d] for n in names],
                 width=0.8 / len(result.devices), label=f"{device.name} ({device.target})")
    ax_t.set_ylabel("compute ms")
    ax_t.set_yscale("log")
    ax_t.legend()
    cut_kb = [c.nbytes / 1024 for c in g.cut_candidates] + [float("nan")]  # no cut after the last
    ax_b.plot(list(x), cut_kb, marker="o")
    ax_b.set_ylabel("bytes crossing a cut after the layer (KB)")
    ax_b.set_yscale("symlog")
    for k in range(len(names) - 1):
        if result.predicted.assignment[k] != result.predicted.assignment[k + 1]:
            for ax in (ax_t, ax_b):
                ax.axvline(k + 0.5, color="red", linestyle="--")
    ax_b.set_xticks(list(x))
    ax_b.set_xticklabels(names, rotation=90, fontsize=7)
    b = result.predicted
    parallel = (f", {result.critical_path_ms:.1f} ms with parallel stages"
                if result.critical_path_ms is not None else "")
    fig.suptitle(f"{g.name}: {result.method}, latency {b.latency_ms:.1f} ms{parallel} "
                 f"(red: cuts between devices)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
