"""Table I from measurement runs: compute savings (model and realized), energy savings and
accuracy beside the paper's.

    python -m measurements.table1 measurements/runs/RUN_FOLDER --out measurements/table1

Each RUN is a run folder written by ``measurements/run_measurement.py``; its ``summary.json``
gives, per model, the per-repeat energy per inference (idle power subtracted), the compute
savings and the accuracy. Columns:

- **compute savings (model)**: executed MACs of the paper's cost model against the plain
  backbone, gates included (masked channels count as saved);
- **compute savings realized by the hardware**: the same with every running block counted whole
  (export/accounting.py): dense engines compute masked channels anyway, so only skipped blocks
  and early exits are realized;
- **energy savings**, per repeat r ``1 - E_model,r / E_reference,r``, paired by repeat (both
  measured in the same pass, so slow drifts cancel); the mean and its **energy repeatability
  interval**: a 95% Student-t interval over the repeats, which run the *same* images again (it
  says how repeatable the measurement is, not how the savings vary over images);
- **accuracy** with a 95% Wilson interval over the distinct test images;
- **energy / realized compute savings**, the ratio the paper's Table I puts at 0.90..0.98.

Several RUN folders are pooled as further repeats; they must share one energy source
(host/provenance.py: measured on hardware, measured ARM only, or emulated). Writes
``table1.md``, ``table1.csv`` and ``table1.png``; every sentence of the Markdown is derived
from the runs' data.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.measure import wilson_interval
from host.provenance import ENERGY_SOURCES
from host.records import RunError, read_json

# Table I of the paper: ResNet74-IADI on CIFAR-10, measured on a ZedBoard.
PAPER = (
    {"compute_savings": 0.40, "energy_savings": 0.3608, "accuracy": 0.9365},
    {"compute_savings": 0.50, "energy_savings": 0.4710, "accuracy": 0.9333},
    {"compute_savings": 0.60, "energy_savings": 0.5730, "accuracy": 0.9306},
    {"compute_savings": 0.70, "energy_savings": 0.6679, "accuracy": 0.9254},
    {"compute_savings": 0.80, "energy_savings": 0.7820, "accuracy": 0.9190},
)
TABLE_SOURCES = ("hardware", "arm_only", "emulated")
GROUND_TRUTH_FILE = "ground_truth.json"
"""Beside an emulated run's summary: every window's measured energy against the modelled one."""


class TableError(Exception):
    """A run folder is missing, incomplete or inconsistent with the others."""


def t95(df: int) -> float:
    """Two-sided 95% Student-t quantile for ``df`` degrees of freedom (nan below 1)."""
    from scipy.stats import t

    return math.nan if df < 1 else float(t.ppf(0.975, df))


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
    realized_compute_savings: float
    accuracy: float
    accuracy_ci95: tuple[float, float]
    accuracy_images: int
    energy_per_image_j: float
    energy_savings: float
    energy_repeatability_ci95: float
    repeats: int
    paper: dict[str, float] | None

    @property
    def energy_to_realized(self) -> float:
        """Energy savings over realized compute savings (nan where nothing is realized)."""
        r = self.realized_compute_savings
        return self.energy_savings / r if r > 0 else math.nan


def _load(run: Path) -> dict[str, Any]:
    try:
        summary = read_json(run / "summary.json", "summary")
    except FileNotFoundError:
        raise TableError(
            f"{str(run)!r} has no summary.json: not a finished run; finish it with "
            "`python measurements/run_measurement.py --resume RUN`"
        ) from None
    except RunError as exc:
        raise TableError(str(exc)) from None
    for key in ("energy_source", "reference", "models"):
        if key not in summary:
            raise TableError(f"{str(run / 'summary.json')!r} lacks {key!r}")
    source = summary["energy_source"]
    if source not in TABLE_SOURCES:
        why = (
            "was recorded before boards reported their backend, so its label cannot be trusted; "
            "measure again"
            if source == "measured"
            else f"is none of {', '.join(TABLE_SOURCES)}"
        )
        raise TableError(f"energy_source {source!r} in {str(run)!r} {why}")
    for m in summary["models"]:
        for key in ("realized_compute_savings", "accuracy_correct", "accuracy_images"):
            if key not in m:
                raise TableError(
                    f"model {m.get('key')!r} in {str(run / 'summary.json')!r} lacks {key!r}: "
                    "the run predates realized accounting; measure again"
                )
    return summary


def build_table(runs: list[Path]) -> tuple[list[Row], dict[str, Any]]:
    summaries = [_load(r) for r in runs]
    sources = {s["energy_source"] for s in summaries}
    if len(sources) != 1:
        words = ", ".join(ENERGY_SOURCES[x] for x in sorted(sources))
        raise TableError(f"runs mix energy sources ({words}); make one table of each")
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
                {"m": m, "savings": [], "energy": [], "acc": [], "compute": [], "realized": [],
                 "correct": 0, "n": 0},
            )  # fmt: skip
            slot["savings"] += [1.0 - a / b for a, b in zip(e, ref_e, strict=True)]
            slot["energy"] += list(e)
            slot["acc"].append(m["accuracy"])
            slot["compute"].append(m["compute_savings"])
            slot["realized"].append(m["realized_compute_savings"])
            slot["correct"] += m["accuracy_correct"]
            slot["n"] += m["accuracy_images"]
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
                realized_compute_savings=statistics.fmean(slot["realized"]),
                accuracy=statistics.fmean(slot["acc"]),
                accuracy_ci95=wilson_interval(slot["correct"], slot["n"]),
                accuracy_images=slot["n"],
                energy_per_image_j=statistics.fmean(slot["energy"]),
                energy_savings=savings,
                energy_repeatability_ci95=ci,
                repeats=len(slot["savings"]),
                paper=paper if abs(paper["compute_savings"] - compute) <= 0.05 else None,
            )
        )
    rows.sort(key=lambda r: r.compute_savings)
    first = summaries[0]
    meta = {
        "energy_source": first["energy_source"],
        "board_backend": first.get("board_backend", ""),
        "meter_simulated": first.get("meter_simulated"),
        "reference": ref,
        "reference_energy_per_image_j": statistics.fmean(per_model[ref]["energy"]),
        "reference_accuracy": statistics.fmean(per_model[ref]["acc"]),
        "runs": [str(r) for r in runs],
        "data": first.get("data", ""),
        "images": first.get("images"),
        "repeats_per_run": first.get("repeats"),
        "board": first.get("board", ""),
        "meter": first.get("meter", ""),
        "machine": first.get("machine", ""),
        "recorded_utc": first.get("recorded_utc", ""),
        "model_family": first.get("model_family", ""),
        "notes": [n for s in summaries for n in s.get("notes", [])],
        "ground_truth": [_ground_truth(r) for r in runs if (r / GROUND_TRUTH_FILE).is_file()],
    }
    return rows, meta


def _ground_truth(run: Path) -> dict[str, float]:
    try:
        data = read_json(run / GROUND_TRUTH_FILE, "ground-truth")
    except RunError as exc:
        raise TableError(str(exc)) from None
    return {k: data[k] for k in ("max_abs_relative_error", "max_abs_net_relative_error")}


def _label(meta: dict[str, Any]) -> str:
    """One sentence: where the energy came from, from what the board and meter said."""
    meter = f"meter {meta['meter']}"
    simulated = meta["meter_simulated"]
    meter += " (simulated)" if simulated else " (a real instrument)" if simulated is False else ""
    backend = meta["board_backend"] or "unknown"
    if meta["energy_source"] == "hardware":
        return (
            f"Energy measured on hardware: {meta['board']}, FINN engines (backend {backend}), "
            f"{meter}"
        )
    if meta["energy_source"] == "arm_only":
        return (
            f"Energy measured, ARM only: {meta['board']} runs every graph on its ARM (backend "
            f"{backend}, no FPGA engine), {meter}"
        )
    return (
        f"Energy EMULATED, not a hardware measurement: {meta['board']} (backend {backend}), {meter}"
    )


def title(meta: dict[str, Any]) -> str:
    """The plot's one-line title: what, on what, and where the energy came from."""
    family = meta["model_family"] or "DDI models"
    return f"Table I: {family} on CIFAR-10, ZedBoard, {ENERGY_SOURCES[meta['energy_source']]}"


def _findings(rows: list[Row]) -> list[str]:
    """Sentences computed from the rows (nothing here is written without its numbers)."""
    if not rows:
        return ["No model besides the reference was measured."]
    out = []
    gaps = [r.compute_savings - r.realized_compute_savings for r in rows]
    short = [g for g in gaps if g > 0]
    if short:
        out.append(
            "The hardware realizes less compute savings than the model counts in "
            f"{len(short)} of {len(rows)} rows (by {min(short):.1%} to {max(short):.1%} of the "
            "backbone's MACs): those models' channel masks save MACs in the cost model that "
            "the dense engines still compute."
        )
    else:
        out.append("In every row the hardware realizes all the compute savings the model counts.")
    big = [r for r in rows if r.realized_compute_savings > 0.20]
    if big:
        ratios = [r.energy_to_realized for r in big]
        out.append(
            f"Rows with realized compute savings above 20%: {len(big)} "
            f"({', '.join(r.model for r in big)}); energy savings / realized compute savings "
            f"{min(ratios):.2f} to {max(ratios):.2f} (the paper's Table I: 0.90 to 0.98)."
        )
    else:
        out.append("No row's realized compute savings exceed 20%.")
    return out


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    pct = "{:.2%}".format
    reps = meta["repeats_per_run"]
    lines = [
        "# Table I: compute savings, energy savings and accuracy",
        "",
        f"**{_label(meta)}.** Model family: {meta['model_family'] or 'see runs'}; data: "
        f"{meta['data']}, {meta['images']} test images; reference (0% savings): "
        f"`{meta['reference']}` at {meta['reference_energy_per_image_j'] * 1e3:.4f} mJ per image "
        f"(idle power subtracted), accuracy {pct(meta['reference_accuracy'])}. Recorded "
        f"{meta['recorded_utc']} on {meta['machine']}. Runs: {', '.join(meta['runs'])}.",
        "",
        "| model | compute savings (model) | compute savings realized by the hardware | "
        "energy savings | energy repeatability (95%) | energy / realized compute savings | "
        "accuracy (95% interval over images) | energy/image (mJ) | repeats | "
        "paper: comp / energy savings / accuracy (ResNet74-IADI) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rep = (
            "-"
            if math.isnan(r.energy_repeatability_ci95)
            else f"± {r.energy_repeatability_ci95:.2%}"
        )
        ratio = "-" if math.isnan(r.energy_to_realized) else f"{r.energy_to_realized:.2f}"
        lo, hi = r.accuracy_ci95
        paper = (
            f"{pct(r.paper['compute_savings'])} / {pct(r.paper['energy_savings'])} / "
            f"{pct(r.paper['accuracy'])}"
            if r.paper
            else "-"
        )
        lines.append(
            f"| {r.model} | {pct(r.compute_savings)} | {pct(r.realized_compute_savings)} | "
            f"{pct(r.energy_savings)} | {rep} | {ratio} | {pct(r.accuracy)} "
            f"({pct(lo)}..{pct(hi)}) | {r.energy_per_image_j * 1e3:.4f} | {r.repeats} | {paper} |"
        )
    lines += [""]
    for sentence in _findings(rows):
        lines += [sentence, ""]
    lines += [
        "Compute savings (model): executed MACs of the cost model against the plain backbone, "
        "gates included; masked channels count as saved. Realized by the hardware: the same "
        "with every running block counted whole (dense engines compute masked channels), so "
        "only skipped blocks and early exits count. Energy savings: 1 - E/E_reference per "
        f"repeat (paired), mean over {rows[0].repeats if rows else 0} repeats; the energy "
        f"repeatability interval is a Student-t 95% interval over those repeats, which run the "
        f"same {meta['images']} images again ({reps} repeats per run): it measures how "
        "repeatable the "
        "measurement is, not how savings vary over images. Accuracy: a 95% Wilson interval "
        f"over the {rows[0].accuracy_images if rows else 0} distinct test images. The paper's "
        "column is its Table I row with the nearest compute savings (within 5 points); its "
        "network (ResNet-74, 93-94% accuracy) differs from ours where the model family says so.",
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
            ["model", "bundle_id", "energy_source", "board_backend", "meter_simulated",
             "compute_savings_model", "compute_savings_realized", "energy_savings",
             "energy_repeatability_ci95", "energy_to_realized_compute_savings", "accuracy",
             "accuracy_ci95_low", "accuracy_ci95_high", "accuracy_images",
             "energy_per_image_j", "repeats", "paper_compute_savings", "paper_energy_savings",
             "paper_accuracy"]
        )  # fmt: skip
        for r in rows:
            p = r.paper or {}
            w.writerow(
                [r.model, r.bundle_id, meta["energy_source"], meta["board_backend"],
                 meta["meter_simulated"], f"{r.compute_savings:.6f}",
                 f"{r.realized_compute_savings:.6f}", f"{r.energy_savings:.6f}",
                 f"{r.energy_repeatability_ci95:.6f}", f"{r.energy_to_realized:.6f}",
                 f"{r.accuracy:.6f}", f"{r.accuracy_ci95[0]:.6f}", f"{r.accuracy_ci95[1]:.6f}",
                 r.accuracy_images, f"{r.energy_per_image_j:.9g}", r.repeats,
                 p.get("compute_savings", ""), p.get("energy_savings", ""),
                 p.get("accuracy", "")]
            )  # fmt: skip


def _families(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows by gating family, read from their bundle ids (``NAME-GATING-DIGEST``), in order."""
    out: dict[str, list[Row]] = {}
    for r in rows:
        parts = r.bundle_id.split("-")
        out.setdefault(parts[1] if len(parts) >= 3 else "", []).append(r)
    return out


def plot(rows: list[Row], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = ENERGY_SOURCES[meta["energy_source"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    pc = [p["compute_savings"] * 100 for p in PAPER]
    ax1.plot(pc, [p["energy_savings"] * 100 for p in PAPER], "s--", label="paper (ResNet74-IADI)")
    ax1.plot([0, 100], [0, 100], ":", color="grey", lw=0.8, label="energy = compute savings")
    ax2.plot(pc, [p["accuracy"] * 100 for p in PAPER], "s--", label="paper (ResNet74-IADI)")
    markers = iter("o^Dv")
    for family, group in _families(rows).items():
        m = next(markers, "o")
        name = f"ours, {family}" if family else "ours"
        yerr = [
            0 if math.isnan(r.energy_repeatability_ci95) else r.energy_repeatability_ci95 * 100
            for r in group
        ]
        energy = [r.energy_savings * 100 for r in group]
        ax1.errorbar([r.compute_savings * 100 for r in group], energy, yerr=yerr, fmt=m + "-",
                     capsize=3, label=f"{name} vs model compute savings ({source})")  # fmt: skip
        ax1.plot([r.realized_compute_savings * 100 for r in group], energy, m, mfc="none", ms=9,
                 label=f"{name} vs realized compute savings")  # fmt: skip
        acc = [r.accuracy * 100 for r in group]
        acc_err = [
            [a - r.accuracy_ci95[0] * 100 for a, r in zip(acc, group, strict=True)],
            [r.accuracy_ci95[1] * 100 - a for a, r in zip(acc, group, strict=True)],
        ]
        ax2.errorbar([r.compute_savings * 100 for r in group], acc, yerr=acc_err, fmt=m + "-",
                     capsize=3, label=f"{name} (95% interval over images)")  # fmt: skip
    low = min([0.0] + [r.energy_savings * 100 - 5 for r in rows])
    ax1.set(
        xlabel="compute savings (%)", ylabel="energy savings (%)", xlim=(0, 100), ylim=(low, 100)
    )
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.legend(fontsize=6)
    ax2.set(xlabel="compute savings, model (%)", ylabel="accuracy (%)", xlim=(0, 100))
    ax2.legend(fontsize=6)
    fig.suptitle(title(meta), fontsize=10)
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
