"""Table I from measurement runs: compute savings, energy savings and accuracy beside the paper's.

    python -m measurements.table1 measurements/runs/RUN_FOLDER --out measurements/table1

Each RUN is a run folder written by ``host/run_measurement.py``; its ``summary.json`` gives, per
model, the per-repeat energy per inference (idle power subtracted), the compute savings and the
accuracy. For every model other than the reference (the full network), per repeat r::

    energy savings_r = 1 - E_model,r / E_reference,r

paired by repeat (both measured in the same pass, so slow drifts of the board's temperature or
supply cancel), then the mean and a 95% confidence interval (Student t over the repeats). Several
RUN folders are pooled as further repeats. Writes ``table1.md``, ``table1.csv`` and
``table1.png`` (accuracy and energy savings against compute savings, ours beside the paper's),
each labelled with where the energy came from: measured on hardware, or emulated from FINN
estimates (the emulated board).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Table I of the paper: ResNet74-IADI on CIFAR-10, measured on a ZedBoard.
PAPER = (
    {"compute_savings": 0.40, "energy_savings": 0.3608, "accuracy": 0.9365},
    {"compute_savings": 0.50, "energy_savings": 0.4710, "accuracy": 0.9333},
    {"compute_savings": 0.60, "energy_savings": 0.5730, "accuracy": 0.9306},
    {"compute_savings": 0.70, "energy_savings": 0.6679, "accuracy": 0.9254},
    {"compute_savings": 0.80, "energy_savings": 0.7820, "accuracy": 0.9190},
)
ENERGY_SOURCES = ("measured", "emulated")

# Two-sided 95% Student t quantiles by degrees of freedom; the standard library has no t
# distribution and one table is lighter than a SciPy dependency for this.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


class TableError(Exception):
    """A run folder is missing, incomplete or inconsistent with the others."""


def t95(df: int) -> float:
    if df < 1:
        return math.nan
    keys = sorted(k for k in _T95 if k <= df)
    return _T95[keys[-1]] if df <= 30 else 1.960


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (nan with a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


@dataclass
class Row:
    model: str
    bundle_id: str
    compute_savings: float
    accuracy: float
    energy_per_image_j: float
    energy_savings: float
    energy_savings_ci95: float
    repeats: int
    paper: dict[str, float] | None


def _load(run: Path) -> dict[str, Any]:
    try:
        summary = json.loads((run / "summary.json").read_text())
    except FileNotFoundError:
        raise TableError(
            f"{str(run)!r} has no summary.json: not a finished run; finish it with "
            "`python host/run_measurement.py --resume RUN`"
        ) from None
    except json.JSONDecodeError as exc:
        raise TableError(f"{str(run / 'summary.json')!r} is not valid JSON: {exc}") from None
    for key in ("energy_source", "reference", "models"):
        if key not in summary:
            raise TableError(f"{str(run / 'summary.json')!r} lacks {key!r}")
    if summary["energy_source"] not in ENERGY_SOURCES:
        raise TableError(f"energy_source {summary['energy_source']!r} in {str(run)!r} is unknown")
    return summary


def build_table(runs: list[Path]) -> tuple[list[Row], dict[str, Any]]:
    summaries = [_load(r) for r in runs]
    sources = {s["energy_source"] for s in summaries}
    if len(sources) != 1:
        raise TableError("runs mix measured and emulated energy; make one table of each")
    reference = {s["reference"] for s in summaries}
    if len(reference) != 1:
        raise TableError(f"runs use different reference models {sorted(reference)!r}")
    ref = reference.pop()
    per_model: dict[str, dict[str, Any]] = {}
    for s in summaries:
        models = {m["key"]: m for m in s["models"]}
        if ref not in models:
            raise TableError(f"reference model {ref!r} missing from a run's summary")
        ref_e = models[ref]["energy_per_image_j"]
        for key, m in models.items():
            e = m["energy_per_image_j"]
            if len(e) != len(ref_e):
                raise TableError(f"model {key!r} has {len(e)} repeats, the reference {len(ref_e)}")
            slot = per_model.setdefault(
                key,
                {"m": m, "savings": [], "energy": [], "acc": [], "compute": []},
            )
            slot["savings"] += [1.0 - a / b for a, b in zip(e, ref_e, strict=True)]
            slot["energy"] += list(e)
            slot["acc"].append(m["accuracy"])
            slot["compute"].append(m["compute_savings"])
    rows = []
    for key, slot in per_model.items():
        if key == ref:
            continue
        compute = statistics.fmean(slot["compute"])
        savings, ci = mean_ci(slot["savings"])
        paper = min(PAPER, key=lambda p: abs(p["compute_savings"] - compute))
        rows.append(
            Row(
                model=key,
                bundle_id=slot["m"].get("bundle_id", ""),
                compute_savings=compute,
                accuracy=statistics.fmean(slot["acc"]),
                energy_per_image_j=statistics.fmean(slot["energy"]),
                energy_savings=savings,
                energy_savings_ci95=ci,
                repeats=len(slot["savings"]),
                paper=paper if abs(paper["compute_savings"] - compute) <= 0.05 else None,
            )
        )
    rows.sort(key=lambda r: r.compute_savings)
    first = summaries[0]
    meta = {
        "energy_source": first["energy_source"],
        "reference": ref,
        "reference_energy_per_image_j": statistics.fmean(per_model[ref]["energy"]),
        "reference_accuracy": statistics.fmean(per_model[ref]["acc"]),
        "runs": [str(r) for r in runs],
        "data": first.get("data", ""),
        "images": first.get("images"),
        "board": first.get("board", ""),
        "meter": first.get("meter", ""),
        "machine": first.get("machine", ""),
        "recorded_utc": first.get("recorded_utc", ""),
        "model_family": first.get("model_family", ""),
        "notes": [n for s in summaries for n in s.get("notes", [])],
        "ground_truth": [_ground_truth(r) for r in runs if (r / "ground_truth.json").is_file()],
    }
    return rows, meta


def _ground_truth(run: Path) -> dict[str, float]:
    data = json.loads((run / "ground_truth.json").read_text())
    return {k: data[k] for k in ("max_abs_relative_error", "max_abs_net_relative_error")}


def _label(meta: dict[str, Any]) -> str:
    if meta["energy_source"] == "measured":
        return f"energy measured on hardware ({meta['board']}, meter {meta['meter']})"
    return (
        f"energy EMULATED, not a hardware measurement: time and power modelled by the emulated "
        f"board ({meta['board']}), read by a simulated meter ({meta['meter']})"
    )


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    pct = "{:.2%}".format
    lines = [
        "# Table I: compute savings, energy savings and accuracy",
        "",
        f"**{_label(meta)}.** Model family: {meta['model_family'] or 'see runs'}; data: "
        f"{meta['data']}, {meta['images']} test images; reference (0% savings): "
        f"`{meta['reference']}` at {meta['reference_energy_per_image_j'] * 1e3:.4f} mJ per image "
        f"(idle power subtracted), accuracy {pct(meta['reference_accuracy'])}. Recorded "
        f"{meta['recorded_utc']} on {meta['machine']}. Runs: {', '.join(meta['runs'])}.",
        "",
        "| model | comp savings | energy savings (95% CI) | accuracy | energy/image (mJ) | "
        "repeats | paper: comp / energy savings / accuracy (ResNet74-IADI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = "" if math.isnan(r.energy_savings_ci95) else f" ± {r.energy_savings_ci95:.2%}"
        paper = (
            f"{pct(r.paper['compute_savings'])} / {pct(r.paper['energy_savings'])} / "
            f"{pct(r.paper['accuracy'])}"
            if r.paper
            else "-"
        )
        lines.append(
            f"| {r.model} | {pct(r.compute_savings)} | {pct(r.energy_savings)}{ci} | "
            f"{pct(r.accuracy)} | {r.energy_per_image_j * 1e3:.4f} | {r.repeats} | {paper} |"
        )
    lines += [
        "",
        "Compute savings: executed MACs against the plain backbone, gates included. Energy "
        "savings: 1 - E/E_reference per repeat (paired), mean and Student-t 95% interval. "
        "The paper's column is its Table I row with the nearest compute savings (within 5 "
        "points); its network (ResNet-74, 93-94% accuracy) differs from ours where the model "
        "family says so.",
        "",
    ]
    for g in meta["ground_truth"]:
        lines += [
            "Ground truth (emulated board): the largest deviation of a window's measured energy "
            f"from the energy the emulator modelled is {g['max_abs_relative_error']:.3%} "
            f"({g['max_abs_net_relative_error']:.3%} after subtracting idle power).",
            "",
        ]
    lines += [f"{note}\n" for note in dict.fromkeys(meta["notes"])]
    return "\n".join(lines)


def write_csv(rows: list[Row], meta: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["model", "bundle_id", "energy_source", "compute_savings", "energy_savings",
             "energy_savings_ci95", "accuracy", "energy_per_image_j", "repeats",
             "paper_compute_savings", "paper_energy_savings", "paper_accuracy"]
        )  # fmt: skip
        for r in rows:
            p = r.paper or {}
            w.writerow(
                [r.model, r.bundle_id, meta["energy_source"], f"{r.compute_savings:.6f}",
                 f"{r.energy_savings:.6f}", f"{r.energy_savings_ci95:.6f}", f"{r.accuracy:.6f}",
                 f"{r.energy_per_image_j:.9g}", r.repeats, p.get("compute_savings", ""),
                 p.get("energy_savings", ""), p.get("accuracy", "")]
            )  # fmt: skip


def plot(rows: list[Row], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    pc = [p["compute_savings"] * 100 for p in PAPER]
    ax1.plot(pc, [p["energy_savings"] * 100 for p in PAPER], "s--", label="paper (ResNet74-IADI)")
    ax1.plot([0, 100], [0, 100], ":", color="grey", lw=0.8, label="energy = compute savings")
    ax1.errorbar(
        [r.compute_savings * 100 for r in rows],
        [r.energy_savings * 100 for r in rows],
        yerr=[
            0 if math.isnan(r.energy_savings_ci95) else r.energy_savings_ci95 * 100 for r in rows
        ],
        fmt="o-",
        capsize=3,
        label=f"ours ({meta['energy_source']})",
    )
    low = min([0.0] + [r.energy_savings * 100 - 5 for r in rows])
    ax1.set(
        xlabel="compute savings (%)", ylabel="energy savings (%)", xlim=(0, 100), ylim=(low, 100)
    )
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.legend(fontsize=8)
    ax2.plot(pc, [p["accuracy"] * 100 for p in PAPER], "s--", label="paper (ResNet74-IADI)")
    ax2.plot(
        [r.compute_savings * 100 for r in rows],
        [r.accuracy * 100 for r in rows],
        "o-",
        label="ours",
    )
    ax2.set(xlabel="compute savings (%)", ylabel="accuracy (%)", xlim=(0, 100))
    ax2.legend(fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(_label(meta), 150)), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_table(runs: list[Path], out: Path) -> dict[str, Path]:
    rows, meta = build_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "table1.md", "csv": out / "table1.csv", "png": out / "table1.png"}
    paths["md"].write_text(markdown(rows, meta))
    write_csv(rows, meta, paths["csv"])
    plot(rows, meta, paths["png"])
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m measurements.table1", description=__doc__)
    p.add_argument("runs", nargs="+", help="run folders (pooled as repeats)")
    p.add_argument("--out", required=True, help="folder for table1.md, table1.csv, table1.png")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        paths = write_table([Path(r) for r in args.runs], Path(args.out))
    except TableError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
