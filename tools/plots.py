"""The accuracy-against-trainable-parameters plot shared by the demo (``tools/demo.py``), the run
comparison (``tools/compare_runs.py``) and the protocol sweep (``tools/sweep.py``): top-1 against
trainable parameters on a log axis, marker area proportional to GFLOPs, one colour per group
named in a legend outside the axes, optional error bars (std over seeds), and optional text
beside each point, placed so that no two texts overlap. Also the class probabilities of a video
over time (``tools/predict.py --window --plot``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# Marker area (points^2) of the point with the most GFLOPs; the others scale with their GFLOPs.
LARGEST_MARKER = 300.0
PLAIN_MARKER = 60.0  # every marker when GFLOPs were not counted
# Where a label may go, tried in this order: direction from the point and the text's anchor.
DIRECTIONS = ((1.0, 0.0, "left", "center"), (-1.0, 0.0, "right", "center"),
              (0.0, 1.0, "center", "bottom"), (0.0, -1.0, "center", "top"),
              (0.7, 0.7, "left", "bottom"), (-0.7, 0.7, "right", "bottom"),
              (0.7, -0.7, "left", "top"), (-0.7, -0.7, "right", "top"))
GAPS_PT = (3.0, 12.0, 24.0, 40.0)  # distances from the marker's edge, in points
LABEL_PAD_PX = 2.0  # space kept around a label's text (its white backing)


@dataclass(frozen=True)
class PlotPoint:
    """One point of the plot.

    Args:
        params: trainable parameters (x axis, log scale).
        top1: top-1 accuracy in percent (y axis).
        gflops: GFLOPs of one view (marker area); None where they were not counted.
        group: points of one group share a colour and one legend entry.
        legend: the legend entry of the group (the group's first point's is used).
        label: text beside the point ('' for none).
        yerr: half-height of the error bar (the std over seeds), or None for none.
    """

    params: float
    top1: float
    gflops: Optional[float]
    group: str
    legend: str
    label: str = ""
    yerr: Optional[float] = None


def accuracy_vs_params(points: Sequence[PlotPoint], path: str, title: str,
                       ylabel: str = "top-1 on held-out videos (%)",
                       chance: Optional[float] = None,
                       ylim: Tuple[float, float] = (0.0, 100.0)) -> None:
    """Write the plot to ``path`` (the suffix picks the format: png, pdf, svg).

    Args:
        points: what to draw; at least one.
        path: the output file.
        title: the axes title (say what the marker area means).
        ylabel: the y axis label.
        chance: draw a dashed line at this top-1 (chance level), or None.
        ylim: the y axis range.
    """
    import matplotlib  # lazily: slow to import, and only plotting needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sizes = marker_sizes(points)
    colours = plt.get_cmap("tab10")
    groups: Dict[str, List[int]] = {}
    for i, p in enumerate(points):
        groups.setdefault(p.group, []).append(i)
    for g, members in enumerate(groups.values()):
        ax.scatter([points[i].params for i in members], [points[i].top1 for i in members],
                   s=[sizes[i] for i in members], color=colours(g % 10), alpha=0.7,
                   edgecolors="black", linewidths=0.6, label=points[members[0]].legend)
        bars = [i for i in members if points[i].yerr is not None]
        if bars:
            ax.errorbar([points[i].params for i in bars], [points[i].top1 for i in bars],
                        yerr=[points[i].yerr for i in bars], fmt="none", ecolor="black",
                        elinewidth=0.8, capsize=3, zorder=3)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1,
                   label=f"chance ({chance:.1f}%)")
    ax.set_xscale("log")
    ax.set_ylim(*ylim)
    xs = [p.params for p in points]
    ax.set_xlim(min(xs) / 2, max(xs) * 2)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False,
              markerscale=0.6)
    fig.tight_layout()
    if any(p.label for p in points):
        # After the layout: the labels are placed in display coordinates of the final axes.
        place_labels(ax, [(p.params, p.top1) for p in points], [p.label for p in points], sizes)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def protocol_plot(methods: Sequence[Mapping[str, Any]], path: str, title: str,
                  chance: Optional[float] = None) -> None:
    """The plot of a protocol sweep (``utils.sweep_report.build_report``'s ``methods``): each
    method's mean test top-1 with a +- std error bar against its trainable parameters, marker
    area proportional to GFLOPs.

    Args:
        methods: rows with ``method``, ``trainable_params``, ``gflops``, ``top1_mean``,
            ``top1_std`` and ``seeds``.
        path: the output file.
        title: the title's first line (the marker area and bars are explained below it).
        chance: the chance level drawn as a dashed line, or None.
    """
    points = [PlotPoint(r["trainable_params"], r["top1_mean"], r["gflops"], group=r["method"],
                        legend=f"{r['method']}: {r['top1_mean']:.1f} ± {r['top1_std']:.1f}%",
                        yerr=r["top1_std"] if r["top1_std"] == r["top1_std"] else None)
              for r in methods]
    seeds = len(methods[0]["seeds"]) if methods else 0
    accuracy_vs_params(points, path, f"{title}\n(mean ± std over {seeds} seeds; marker area "
                       f"proportional to GFLOPs per view)", ylabel="test top-1 (%)",
                       chance=chance)


def marker_sizes(points: Sequence[PlotPoint]) -> List[float]:
    """Marker areas in points^2: proportional to GFLOPs, or all equal if any is missing."""
    if any(p.gflops is None for p in points):
        return [PLAIN_MARKER] * len(points)
    largest = max(p.gflops for p in points)
    return [LARGEST_MARKER * p.gflops / largest for p in points]


def place_labels(ax: Any, xy: Sequence[Tuple[float, float]], labels: Sequence[str],
                 sizes: Sequence[float], fontsize: float = 7) -> List[Any]:
    """Write ``labels`` beside the points ``xy`` (data coordinates) so that no label overlaps
    another label, a marker or the axes' edge where any free place exists.

    Greedy: for each point in turn, the first free place among ``DIRECTIONS`` at growing
    distances ``GAPS_PT``; if none is free, the place with the least overlap. A label away from
    its marker gets a thin line to it. Call it after the figure's layout is final.

    Args:
        ax: matplotlib axes holding the points.
        xy: the points, in data coordinates.
        labels: one text per point ('' for none).
        sizes: marker areas in points^2 (as given to ``scatter``).
        fontsize: the labels' font size.

    Returns:
        The annotations made, in the order of the points that have a label.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    centres = ax.transData.transform(xy)
    radii_pt = [math.sqrt(s) / 2 for s in sizes]
    taken = [_square(c, r * px_per_pt) for c, r in zip(centres, radii_pt)]  # the markers
    frame = ax.get_window_extent(renderer)
    made = []
    for (x, y), text, r_pt in zip(xy, labels, radii_pt):
        if not text:
            continue
        best: Optional[Tuple[float, Tuple[float, float], str, str, int, Any]] = None
        for ring, gap in enumerate(GAPS_PT):
            for ux, uy, ha, va in DIRECTIONS:
                offset = (ux * (r_pt + gap), uy * (r_pt + gap))
                probe = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points",
                                    ha=ha, va=va, fontsize=fontsize)
                box = probe.get_window_extent(renderer).padded(LABEL_PAD_PX)
                probe.remove()
                cost = sum(_overlap(box, t) for t in taken) + _area(box) - _overlap(box, frame)
                if best is None or cost < best[0]:
                    best = (cost, offset, ha, va, ring, box)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        _, offset, ha, va, ring, box = best
        line = dict(arrowstyle="-", color="grey", linewidth=0.5, shrinkA=0,
                    shrinkB=r_pt) if ring > 0 else None
        # A white backing keeps the text readable over grid lines and the chance line.
        label = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha=ha,
                            va=va, fontsize=fontsize, arrowprops=line, zorder=4,
                            bbox=dict(boxstyle="square,pad=0.1", facecolor="white",
                                      edgecolor="none", alpha=0.8))
        taken.append(box)  # the text's box (the probe's), without the line
        made.append(label)
    return made


def _square(centre: Sequence[float], half: float) -> Any:
    from matplotlib.transforms import Bbox  # lazily, as matplotlib above
    return Bbox.from_extents(centre[0] - half, centre[1] - half, centre[0] + half,
                             centre[1] + half)


def _area(box: Any) -> float:
    return max(box.width, 0.0) * max(box.height, 0.0)


def _overlap(a: Any, b: Any) -> float:
    """Area common to two display-coordinate boxes."""
    from matplotlib.transforms import Bbox  # lazily, as matplotlib above
    common = Bbox.intersection(a, b)
    return 0.0 if common is None else _area(common)


@dataclass(frozen=True)
class TimelinePanel:
    """One video's (and task's) class probabilities over time, for :func:`scores_over_time`.

    Args:
        title: the panel's title (the video, and the task).
        starts: each window's start (seconds).
        ends: each window's end (seconds).
        curves: class name -> its probability in each window.
    """

    title: str
    starts: Sequence[float]
    ends: Sequence[float]
    curves: Mapping[str, Sequence[float]]


def scores_over_time(panels: Sequence[TimelinePanel], path: str) -> None:
    """Write one panel per timeline, stacked, to ``path`` (the suffix picks the format: png,
    pdf, svg): each class a line through the centres of the windows (its probability there),
    a legend beside each panel.

    Args:
        panels: what to draw; at least one.
        path: the output file.
    """
    import matplotlib  # lazily: slow to import, and only plotting needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    fig, axes = plt.subplots(len(panels), 1, figsize=(9.0, 2.6 * len(panels) + 0.6),
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, panel in zip(axes[:, 0], panels):
        centres = [(s + e) / 2 for s, e in zip(panel.starts, panel.ends)]
        for i, (name, probs) in enumerate(panel.curves.items()):
            ax.plot(centres, probs, marker="o", markersize=3, linewidth=1.4,
                    color=colours(i % 10), label=name)
        ax.set_xlim(min(panel.starts), max(panel.ends))
        ax.set_ylim(0.0, 1.02)
        ax.set_ylabel("probability")
        ax.set_title(panel.title, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("time (s), at each window's centre")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
