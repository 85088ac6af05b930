"""Every figure function returns a Figure with a title, labelled axes and, where colours carry
values, a labelled colour bar (checked through matplotlib's public API), on small fake inputs;
and the course's look is seaborn's theme, applied to the figures without changing any global
setting."""
import io
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from apl_core import search, viz  # noqa: E402
from apl_core.puzzle import mosaic, mosaic_cells, puzzle_stats, random_order  # noqa: E402

G, K, N = 3, 1, 24
T = G * G


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def image(seed=0):
    return torch.randint(0, 256, (3, N, N), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def metrics():
    return [dict(epoch=e, lr=1e-3 / e, train_loss=2.0 / e, val_loss=2.1 / e, train_top1=0.1 * e,
                 val_top1=0.09 * e, val_top5=0.2 * e) for e in range(1, 4)]


# Figures whose colours carry a value: each needs a labelled colour bar.
COLOUR_BARS = {"attention", "confusion", "equivariance", "per_position",
               "position_probabilities"}
# Image grids label their outer row and column only (the inner panels share the axes).
IMAGE_GRIDS = {"attention", "reassembly", "samples", "game"}


def assert_titled_and_labelled(name, fig):
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    colour_bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert fig.get_suptitle() or all(ax.get_title() for ax in axes), "figure has no title"
    if name in IMAGE_GRIDS:
        assert any(ax.get_xlabel() for ax in axes) or fig.get_supxlabel(), "no x label"
        assert any(ax.get_ylabel() for ax in axes), "no y label"
    else:
        for ax in axes:
            assert ax.get_xlabel() and ax.get_ylabel(), f"an axes of {name} lacks a label"
    if name in COLOUR_BARS:
        assert colour_bars, f"{name}: colours carry values but there is no colour bar"
        assert all(bar.get_ylabel() or bar.get_xlabel() for bar in colour_bars), \
            f"{name}: a colour bar without a label"


CONVERGENCE_TRIALS = [
    dict(method=m, npc=n, lr=lr, epochs=10, best_epoch=5, val_top1=0.5 - abs(lr - 0.01),
         train_top1=0.6, val_curve=[[e, 0.4 + e / 100] for e in (2, 5, 10)], run=f"{m}{n}{lr}")
    for m in ("a", "b") for n in (10, 30) for lr in (0.001, 0.01, 0.1)]

CASES = {
    "puzzle": lambda: viz.puzzle_figure(image(), G, K),
    "grids": lambda: viz.puzzle_grids_figure(image(), [2, 3], K),
    "patch_dropout_mask": lambda: viz.patch_dropout_mask_figure(
        image(), torch.arange(T) % 4 != 1, G, K, p=0.25),
    "samples": lambda: viz.image_samples_figure(torch.stack([image(i) for i in range(3)]),
                                                torch.tensor([0, 1, 2]), ["a", "b", "c"]),
    "curves": lambda: viz.training_curves(metrics(), chance=1 / T),
    "confusion": lambda: viz.confusion_heatmap(torch.randint(0, 9, (T, T))),
    "position_probabilities": lambda: viz.position_probabilities_figure(
        torch.softmax(torch.randn(T, T), -1)),
    "per_position": lambda: viz.position_accuracy_grid(torch.rand(T), G, chance=1 / T),
    "attention": lambda: viz.attention_figure(
        image(), [torch.softmax(torch.randn(2, T, T), -1) for _ in range(2)], query=4, grid=G),
    "reassembly": lambda: viz.reassembly_figure(
        torch.stack([image(0), image(1)]),
        torch.stack([torch.arange(T), torch.tensor([1, 0] + list(range(2, T)))]), G, K),
    "patch_dropout": lambda: viz.patch_dropout_figure(
        [dict(p=p / 10, kept_accuracy=0.9 - p / 20, dropped_accuracy=0.5) for p in range(10)],
        chance=1 / T),
    "stats": lambda: viz.puzzle_stats_figure(
        [puzzle_stats(96, g, k) for g in (3, 5, 7) for k in (0, 1)]),
    "equivariance": lambda: viz.equivariance_figure(torch.randn(T, T), torch.randn(T, T),
                                                    random_order(G, 0)),
    "npc": lambda: viz.npc_figure([dict(method=m, npc=n, test_top1=0.3 + n / 1000)
                                   for m in ("a", "b") for n in (10, 50)]),
    "game": lambda: viz.game_figure(*(torch.rand(11, 11, 3).numpy() for _ in range(3)), 4, 16),
    "convergence": lambda: viz.convergence_figure(CONVERGENCE_TRIALS,
                                                  search.choose(CONVERGENCE_TRIALS)),
    "controls": lambda: viz.controls_figure(
        [dict(control=c, seed=s, position_top1=p, chance=1 / T, knn_top1=0.2 + s / 100,
              probe_top1=0.3 - s / 100) for s in (0, 1)
         for c, p in (("APL", 0.4), ("leak", 1.0), ("random init", None))]),
    "position_curves": lambda: viz.position_curves_figure(
        [dict(control=c, chance=1 / T, position_curve=[0.1, 0.3, v]) for c, v in
         (("APL", 0.4), ("leak", 1.0))], ["APL", "leak"]),
    "budget_curve": lambda: viz.budget_curve_figure(
        [dict(control=c, seed=s, budget_curve=[dict(epoch=e, knn_top1=0.1 * e + s / 100,
                                                    probe_top1=0.2 + e / 50) for e in (1, 2, 4)])
         for c in ("APL", "leak") for s in (0, 1)] + [dict(control="random init", seed=0)],
        floor={"knn_top1": 0.1, "probe_top1": 0.12}),
    "pretext_curves": lambda: viz.pretext_curves_figure(
        [dict(task=t, seed=s, epoch=e, pretext_loss=2 / e + s / 10,
              pretext_top1=None if t == "mae" else 0.2 * e) for t in ("apl", "mae")
         for s in (0, 1) for e in (1, 2, 3)]),
    "attention_distance": lambda: viz.attention_distance_figure(
        {"a": torch.rand(2, 3).numpy(), "b": torch.rand(2, 3).numpy()}, uniform=1.5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_figure_has_title_and_labels(name, tmp_path):
    fig = CASES[name]()
    assert_titled_and_labelled(name, fig)
    path = viz.save(fig, tmp_path, name)
    assert path.is_file() and path.stat().st_size > 1000


def test_importing_viz_changes_no_matplotlib_setting():
    check = ("import matplotlib\nbefore = dict(matplotlib.rcParams)\nfrom apl_core import viz\n"
             "assert dict(matplotlib.rcParams) == before")
    root = str(Path(__file__).resolve().parent.parent)
    paths = [root, os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    subprocess.run([sys.executable, "-c", check], check=True, env=env)


def test_the_theme_is_seaborns_with_the_course_figure_defaults():
    with plt.rc_context():
        sns.set_theme(context="notebook", style="whitegrid", palette=viz.PALETTE)
        seaborns = dict(plt.rcParams)
        dark = matplotlib.colors.to_rgb("k")
        sns.set_color_codes("reset")
    with viz.theme():
        themed = dict(plt.rcParams)
    figure_defaults = {"figure.dpi", "savefig.dpi", "savefig.bbox", "axes.titleweight",
                       "figure.titleweight"}
    assert {k: v for k, v in themed.items() if k not in figure_defaults} == \
        {k: v for k, v in seaborns.items() if k not in figure_defaults}
    assert dark == viz.DARK


def shown(fig) -> bytes:
    """The PNG a notebook shows (IPython's inline backend draws it so, after the cell)."""
    out = io.BytesIO()
    fig.canvas.print_figure(out, format="png", dpi=fig.dpi, bbox_inches="tight")
    return out.getvalue()


def test_a_figure_is_shown_as_drawn_in_the_theme_and_leaves_the_settings_as_they_were():
    before = dict(plt.rcParams)
    fig = CASES["curves"]()  # its tick labels and how many fit depend on the theme's sizes
    assert dict(plt.rcParams) == before
    outside = shown(fig)
    with viz.theme():
        assert shown(fig) == outside
    assert fig.axes[0].title.get_fontweight() == "bold"
    assert dict(plt.rcParams) == before


def test_the_patch_dropout_mask_greys_and_crosses_exactly_the_dropped_patches():
    keep = torch.ones(T, dtype=torch.bool)
    keep[[1, 5]] = False
    fig = viz.patch_dropout_mask_figure(image(), keep, G, K, p=0.1)
    after = fig.axes[1].images[0].get_array()
    side, gap = mosaic_cells(N, G, K)

    def cell(t):
        y, x = (side + gap) * torch.tensor(divmod(t, G))
        return after[y:y + side, x:x + side]

    assert [t for t in range(T) if (cell(t) == 0.5).all()] == [1, 5]
    assert len(fig.axes[1].lines) == 4  # two strokes per cross
    assert "2 of 9 patches" in fig.get_suptitle()
    with pytest.raises(ValueError, match="a 3 x 3 grid has 9 patches"):
        viz.patch_dropout_mask_figure(image(), keep[:4], G, K, p=0.1)


def test_position_probabilities_count_the_rows_that_peak_on_their_own_position():
    probs = torch.eye(T)
    probs[0] = probs[1]  # the patch at position 0 is put at 1
    fig = viz.position_probabilities_figure(probs)
    assert f"{T - 1} of {T} patches placed right" in fig.axes[0].get_title()


def mask(*images: int) -> str:
    return f"{sum(1 << i for i in images):x}"


def test_convergence_columns_follow_the_given_order_and_show_each_length_by_budget():
    """a at NPC 10: its 2x run wins the paired test (adopted), its 4x run does not; a at NPC
    30: a doubled run of the earlier protocol, without the per-image record; b at NPC 10: its
    2x run diverged."""
    trials = [dict(t, val_correct=mask(0, 1, 2), val_images=10) for t in CONVERGENCE_TRIALS]
    a10, a30, b10 = trials[1], trials[4], trials[7]
    trials += [dict(a10, run="a-x2", epochs=20, val_top1=0.9, longer_of=a10["run"], multiple=2,
                    val_correct=mask(*range(9))),
               dict(a10, run="a-x4", epochs=40, val_top1=0.91, longer_of=a10["run"],
                    multiple=4, val_correct=mask(*range(9))),
               dict(a30, run="a30-double", epochs=20, val_top1=0.6, doubled_of=a30["run"]),
               dict(b10, run="b-x2", epochs=20, val_top1=0.1, longer_of=b10["run"], multiple=2,
                    diverged="non-finite loss")]
    trials += [dict(t, recipe="small-data", run=t["run"] + "sd", val_top1=0.1,
                    **({"diverged": "learned nothing"} if t["lr"] == 0.1 else {}))
               for t in CONVERGENCE_TRIALS[:3]]
    fig = viz.convergence_figure(trials, search.choose(trials), ["b", "missing", "a"])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["b", "a"]
    a_rates = fig.axes[1].lines[0].get_ydata()  # a at NPC 10: its three rates, no longer run
    assert list(a_rates) == pytest.approx([100 * (0.5 - abs(lr - 0.01))
                                           for lr in (0.001, 0.01, 0.1)])
    dotted = [line for line in fig.axes[1].lines if line.get_linestyle() == ":"
              and len(line.get_xdata()) == 3]
    assert [list(line.get_ydata()) for line in dotted] == [pytest.approx([10, 10, 10])]
    crossed = [line for line in fig.axes[1].lines if line.get_marker() == "x"]
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in crossed] == [
        ([0.1], [pytest.approx(10)])]
    b_budget, a_budget = fig.axes[2], fig.axes[3]

    def drawn(ax, **style):
        return [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines
                if all(getattr(line, f"get_{key}")() == value for key, value in style.items())
                and len(line.get_xdata())]

    assert drawn(a_budget, linestyle="-") == [([1, 2, 4], pytest.approx([50, 90, 91])),
                                              ([1, 2], pytest.approx([50, 60]))]
    hollow = drawn(a_budget, markerfacecolor="white")
    assert hollow == [([4], [pytest.approx(91)]), ([2], [pytest.approx(60)])]  # lost, untested
    ringed = drawn(a_budget, markerfacecolor="none")
    assert ringed == [([2], [pytest.approx(90)]), ([1], [pytest.approx(50)])]  # adopted
    assert drawn(b_budget, marker="x") == [([2], [pytest.approx(10)])]
    assert [t.get_text() for t in a_budget.get_xticklabels()] == ["1x", "2x", "4x", "8x", "16x"]
    plt.close(fig)




def test_the_accuracy_figure_draws_every_seed_around_its_mean():
    rows = [dict(method=m, npc=n, seed=s, test_top1=base + s / 100)
            for m, base in (("a", 0.3), ("b", 0.5)) for n in (10, 30) for s in range(3)]
    rows.append(dict(method="a", npc=100, seed=0, test_top1=0.8))  # one seed at NPC 100
    fig = viz.npc_figure(rows)
    ax = fig.axes[0]
    a_line, b_line = (container.lines[0] for container in ax.containers)
    assert list(a_line.get_ydata()) == pytest.approx([31, 31, 80])  # the mean of each NPC
    assert a_line.get_xdata()[0] < 10 < b_line.get_xdata()[0]  # a and b set apart
    a_bars = ax.containers[0].lines[2][0].get_segments()  # one sd either side of the mean
    assert [list(seg[:, 1]) for seg in a_bars] == [pytest.approx([30, 32])] * 2 + [[80, 80]]
    dots = ax.collections
    seeds = [list(c.get_offsets()[:, 1]) for c in dots
             if type(c).__name__ == "PathCollection"]
    assert seeds[0] == pytest.approx([30, 31, 32, 30, 31, 32, 80])
    assert "over up to 3 seeds" in ax.get_legend().get_title().get_text()
    fig.canvas.draw()  # the legend beside the axes, where it hides no line
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    plt.close(fig)
    single = viz.npc_figure([r for r in rows if r["seed"] == 0])
    assert single.axes[0].get_legend().get_title().get_text() == "method"
    assert list(single.axes[0].lines[0].get_xdata()) == [10, 30, 100]  # not set apart
    plt.close(single)


def test_the_pretext_figure_shows_what_each_task_hides_and_the_mae_answer_when_given():
    hidden = torch.zeros(T, dtype=torch.bool)
    hidden[:6] = True
    attendable = ~hidden.roll(3)
    order = random_order(G, 1)
    fig = viz.pretext_tasks_figure(image(), G, K, order, hidden, attendable)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["rotation 0°", "rotation 90°", "rotation 180°", "rotation 270°",
                      "jigsaw: which order?", "MAE: 6 patches hidden", "MP3: faded ones unseen"]
    pictures = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert (pictures[4] == mosaic(image(), G, K, order=order)).all()
    side, gap = mosaic_cells(N, G, K)
    masked, in_order = pictures[5], mosaic(image(), G, K)
    assert (masked[:side, :side] == 0.5).all()  # cell 0 is hidden: grey
    last = slice((G - 1) * (side + gap), (G - 1) * (side + gap) + side)
    assert (masked[last, last] == in_order[last, last]).all()  # cell T - 1 is shown
    tokens = torch.zeros(T, 3 * side * side)  # mid-grey in [-1, 1] colours
    with_answer = viz.pretext_tasks_figure(image(), G, K, order, hidden, attendable,
                                           reconstruction=tokens)
    assert with_answer.axes[-1].get_title() == "MAE's answer"
    assert (with_answer.axes[-1].get_images()[0].get_array()[:side, :side] == 0.5).all()
