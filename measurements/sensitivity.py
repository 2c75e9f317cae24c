"""How much the emulated energy savings depend on each parameter of the emulator's models.

    python -m measurements.sensitivity RUN_FOLDER --hw-report HW.json [--power-model P.json]
        --out measurements/table1

The emulated board's energy is a function of what every image did (which blocks ran, which
classifier answered: the run folder's ``results.csv``) and of the parameters of its timing model
(fpga/emulator/timing.py) and power model (fpga/emulator/board.py). This recomputes, from the
run's own per-image records, the energy savings of every model against the reference with each
parameter moved by -50% and +50% in turn, all else at its value in the run:

- **net** energy savings: idle power subtracted, as Table I reports them (static power cancels,
  so the static parameters change nothing there, by construction);
- **total** energy savings: everything the board draws during the inference, static included.

Writes ``sensitivity.json`` and ``sensitivity.md``. A modelled figure, labelled so: it says how
far the emulated Table I moves if a parameter is off by half, not what hardware would measure.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export.executor import BATCH_SIZE
from export.manifest import load_bundle
from fpga.emulator import EmulatorError
from fpga.emulator.timing import HardwareReportTiming, MacRateTiming, Phase, recorded_arm_work
from host.records import RunError, read_json

FACTORS = (0.5, 1.5)


class SensitivityError(Exception):
    """A run folder cannot be re-modelled (missing files, another bundle)."""


@dataclasses.dataclass
class _Decisions:
    """Per image of one model's first repeat, what the executor decided (timing's input)."""

    executed: np.ndarray  # (N, blocks) bool
    channels: np.ndarray  # (N, blocks) int64
    exits: np.ndarray  # (N,) int64
    windows: list[slice]  # the images of each measurement window (one RUN_BATCH each)


def _decisions(run: Path) -> tuple[dict[str, Any], dict[str, _Decisions]]:
    try:
        config = read_json(run / "config.json", "config")
        with open(run / "results.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError, RunError) as exc:
        raise SensitivityError(f"{str(run)!r} is not a readable run folder: {exc}") from None
    out = {}
    for m in config["models"]:
        mine = [r for r in rows if r["model"] == m["key"]]
        if not mine:
            raise SensitivityError(f"run {str(run)!r} has no results for model {m['key']!r}")
        first = min(int(r["repeat"]) for r in mine)
        mine = [r for r in mine if int(r["repeat"]) == first]
        out[m["key"]] = _Decisions(
            executed=np.array([[c == "1" for c in r["executed_blocks"]] for r in mine]),
            channels=np.array([[int(c) for c in r["channels_per_block"].split(";")] for r in mine]),
            exits=np.array([int(r["exit"]) for r in mine]),
            windows=_runs([r["window"] for r in mine]),
        )
    return config, out


def _runs(labels: list[str]) -> list[slice]:
    """The slices of equal consecutive labels."""
    cuts = [k for k in range(1, len(labels)) if labels[k] != labels[k - 1]]
    return [slice(a, b) for a, b in zip([0, *cuts], [*cuts, len(labels)], strict=True)]


def _durations(
    manifest, decisions: _Decisions, mode: str, timing, batch_size: int = BATCH_SIZE
) -> dict[Any, float]:
    """Mean seconds per image spent in each phase kind ``Phase(unit, graph, 0)``, each window's
    images run together as the board ran them (one RUN_BATCH per window, in executor batches
    of ``batch_size``: the timing model shares a call's overhead between the images of one
    executor batch)."""

    out: dict[Any, float] = {}
    n = len(decisions.exits)
    for rows in decisions.windows:
        window = (decisions.executed[rows], decisions.channels[rows], decisions.exits[rows])
        for phases in timing.decision_phases(manifest, *window, mode, batch_size):
            for p in phases:
                key = Phase(p.unit, p.graph, 0.0)
                out[key] = out.get(key, 0.0) + p.duration_s / max(n, 1)
    return out


def _savings(reference: str, durations: dict[str, dict], power) -> dict[str, dict[str, float]]:
    energy = {}
    for key, by_phase in durations.items():
        total = sum(t * power.phase_w(p) for p, t in by_phase.items())
        net = sum(t * (power.phase_w(p) - power.static_w) for p, t in by_phase.items())
        energy[key] = (net, total)
    ref = energy[reference]
    return {
        key: {"net": 1.0 - e[0] / ref[0], "total": 1.0 - e[1] / ref[1]}
        for key, e in energy.items()
        if key != reference
    }


def sensitivity(run: str | Path, timing, power) -> dict[str, Any]:
    """The table for the run folder ``run`` under the models ``timing`` and ``power``."""

    run = Path(run)
    config, decisions = _decisions(run)
    ref = config["reference"]
    manifests = {
        m["key"]: load_bundle(m["bundle"], verify=False).manifest for m in config["models"]
    }

    # the board's executor batch (runs recorded before it was configurable used the default)
    batch = int(config.get("extra", {}).get("emulator", {}).get("executor_batch", BATCH_SIZE))

    def durations(t) -> dict[str, dict]:
        return {
            m["key"]: _durations(manifests[m["key"]], decisions[m["key"]], m["mode"], t, batch)
            for m in config["models"]
        }

    base_durations = durations(timing)
    base = _savings(ref, base_durations, power)
    params: list[dict[str, Any]] = []
    for name, value in timing.params.items():
        results = {
            str(f): _savings(ref, durations(timing.with_params(**{name: value * f})), power)
            for f in FACTORS
        }
        params.append({"model": "timing", "parameter": name, "value": value, "results": results})
    for name in type(power).SCALARS:
        value = getattr(power, name)
        results = {
            str(f): _savings(ref, base_durations, dataclasses.replace(power, **{name: value * f}))
            for f in FACTORS
        }
        params.append({"model": "power", "parameter": name, "value": value, "results": results})
    return {
        "label": "modelled (emulator parameters moved one at a time), not measured",
        "run": str(run),
        "reference": ref,
        "timing": repr(timing),
        "power_model": {**dataclasses.asdict(power), "static_w": power.static_w},
        "factors": list(FACTORS),
        "baseline": base,
        "parameters": params,
    }


def markdown(table: dict[str, Any]) -> str:
    models = list(table["baseline"])
    base = table["baseline"]
    lo, hi = (str(f) for f in table["factors"])
    lines = [
        "# Sensitivity of the emulated energy savings to the emulator's parameters",
        "",
        f"**Modelled, not measured.** From the per-image decisions of run `{table['run']}` "
        f"(reference `{table['reference']}`), the energy savings of each model are recomputed "
        "with one parameter at -50% and at +50%, all others at their values in the run "
        f"({table['timing']}). Net: idle power subtracted, as Table I; total: static power "
        "included.",
        "",
        "Baseline (parameters as in the run): "
        + "; ".join(f"`{k}` net {v['net']:.1%}, total {v['total']:.1%}" for k, v in base.items())
        + ".",
        "",
        "Net energy savings, percentage points of change at -50% / +50%:",
        "",
        "| parameter | value | " + " | ".join(f"`{k}`" for k in models) + " |",
        "|---|---|" + "---|" * len(models),
    ]

    def cells(p: dict[str, Any], kind: str) -> str:
        out = []
        for k in models:
            a = (p["results"][lo][k][kind] - base[k][kind]) * 100
            b = (p["results"][hi][k][kind] - base[k][kind]) * 100
            out.append(f"{a + 0.0:+.1f} / {b + 0.0:+.1f}".replace("-0.0", "+0.0"))
        return " | ".join(out)

    for p in table["parameters"]:
        lines.append(f"| {p['model']}.{p['parameter']} | {p['value']:g} | {cells(p, 'net')} |")
    lines += [
        "",
        "Total energy savings (static power included), percentage points of change at -50% / +50%:",
        "",
        "| parameter | value | " + " | ".join(f"`{k}`" for k in models) + " |",
        "|---|---|" + "---|" * len(models),
    ]
    for p in table["parameters"]:
        lines.append(f"| {p['model']}.{p['parameter']} | {p['value']:g} | {cells(p, 'total')} |")
    swing = {
        (p["model"], p["parameter"]): max(
            abs(p["results"][f][k]["net"] - base[k]["net"]) for f in (lo, hi) for k in models
        )
        for p in table["parameters"]
    }
    (m, name), worst = max(swing.items(), key=lambda kv: kv[1])
    lines += [
        "",
        f"The largest move of a net energy saving is {worst * 100:.1f} points, by `{m}.{name}`.",
        "",
    ]
    return "\n".join(lines)


def write(table: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "sensitivity.json", "md": out / "sensitivity.md"}
    paths["json"].write_text(json.dumps(table, indent=1) + "\n")
    paths["md"].write_text(markdown(table))
    return paths


def main(argv: list[str] | None = None) -> int:
    # serial (pyserial): loaded only when this runs
    from fpga.emulator.board import PowerModel

    p = argparse.ArgumentParser(prog="python -m measurements.sensitivity", description=__doc__)
    p.add_argument("run", help="a run folder of the emulated board")
    p.add_argument("--hw-report", help="the run's hardware report (default: MAC-rate timing)")
    p.add_argument("--power-model", help="the run's power model JSON (default: the defaults)")
    p.add_argument("--out", required=True, help="folder for sensitivity.{json,md}")
    p.add_argument(
        "--arm-rates",
        action="store_true",
        help="the ARM's engine calls at the per-value rates, not the ARM bench's model "
        "(as the run was made)",
    )
    args = p.parse_args(argv)
    try:
        arm = {} if args.arm_rates else {"arm_work": recorded_arm_work()}
        timing = (
            HardwareReportTiming.from_json(args.hw_report, **arm)
            if args.hw_report
            else MacRateTiming(**arm)
        )
        power = PowerModel.from_json(args.power_model) if args.power_model else PowerModel()
        if args.hw_report:
            power = power.with_report(timing.report)
        paths = write(sensitivity(args.run, timing, power), Path(args.out))
    except (SensitivityError, EmulatorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
