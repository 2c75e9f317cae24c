"""Energy model of the paper's Eq. 6 for a systolic-array CNN accelerator.

The paper (Dual Dynamic Inference, section IV-B, "IADI with Different Resource-aware Losses")
trains with an energy loss computed per layer as

    E = sum_i #acc_i * e_i + #MAC * e_MAC                                         (Eq. 6)

over three memory levels i (main memory, the on-chip "cache" or global buffer, and the PE
register files), with the access counts #acc_i and #MAC taken from SCALE-Sim (Samajdar et al.,
"SCALE-Sim: Systolic CNN Accelerator Simulator", arXiv:1811.02883, 2018). SCALE-Sim's package
requires numpy < 2.3 and cannot be installed next to this project's numpy 2.4, and its traces
are too slow for a training loss; this module therefore counts the same quantities in closed
form, with the same mapping of a layer onto the array. Everything here imports only the
standard library and numpy (no torch): it also runs on the board's ARM CPU.

Model (see docs/energy-model.md for the derivation and what is ignored):

* A layer is a GEMM ``O[M, N] = I[M, K] @ W[K, N]`` per group: M = out_h * out_w output pixels,
  K = kernel_h * kernel_w * in_channels / groups, N = out_channels / groups. Batch 1 (the
  paper's per-image cost); a grouped layer is ``groups`` independent GEMMs run one after the
  other. Bias, batch norm, ReLU, pooling and residual adds are not counted.
* The array has R = ``array_rows`` x C = ``array_cols`` PEs. Mapping, as in SCALE-Sim:
  ``os`` (output stationary): rows <- M, cols <- N, each PE accumulates one output over all K;
  ``ws`` (weight stationary): rows <- K, cols <- N, a K x N weight tile is loaded per fold and
  all M ifmap rows stream through; ``is`` (input stationary): rows <- K, cols <- M, a K x M
  ifmap tile is loaded per fold and all N filters stream through. A dimension of size D mapped
  on A PEs takes ``ceil(D / A)`` folds.
* Loop order and tiling (the "refetch" assumptions): ``os`` and ``ws`` loop over column folds
  of N outermost, so the ifmap is streamed once per N fold; it is fetched from DRAM once if the
  whole ifmap fits the ifmap buffer, otherwise once per N fold. ``os`` keeps the K x min(N, C)
  filter tile of the current N fold while it loops over M folds: fetched once if that tile fits
  the filter buffer, otherwise once per M fold. ``ws`` uses every weight in exactly one fold:
  filters are always fetched once. ``is`` loops over M folds outermost and re-streams all
  filters per M fold: fetched once if all filters fit the filter buffer, otherwise once per M
  fold; the ifmap is fetched once. In ``ws`` and ``is`` a reduction longer than the array
  (more than one K fold) leaves partial sums that are accumulated across K folds in the ofmap
  buffer (read-modify-write at the array's edge); if the partial sums of one N fold (``ws``:
  M x min(N, C)) or M fold (``is``: min(M, C) x N) do not fit the ofmap buffer, they spill to
  DRAM and come back once per extra K fold. Final outputs are requantized to one word at the
  array's edge and drained to DRAM as they are produced (double buffered), so the ofmap buffer
  bounds only the partial sums. An operand "fits" when its bytes are at most the buffer's
  capacity (SCALE-Sim also uses the whole capacity as its working set); partial reuse of an
  operand that almost fits, and the halo of overlapping ifmap windows, are not modelled.
* Global-buffer accesses are the array-side reads and writes, as SCALE-Sim counts them: the
  buffer serves im2col rows (each ifmap word is read once per window that uses it); writes of
  words arriving from DRAM are priced into the DRAM access, not counted again.
* Register-file accesses: per MAC, the PE reads its two operands and reads and writes its
  partial sum (Eyeriss's 3 reads + 1 write). Systolic hops of operands between neighbouring PEs
  (Eyeriss's inter-PE "array" level, 2x an RF access) are not a level of Eq. 6 and are ignored.
* Unit of every count: one access = one word of ``word_bytes``. A partial sum is
  ``psum_bytes`` wide and counts as ``psum_bytes // word_bytes`` word accesses wherever it
  moves (PE accumulator, ofmap buffer, DRAM spill), so that a per-word unit energy prices wide
  accesses by their width. With ``psum_bytes == word_bytes`` the RF count is Eyeriss's 4 per MAC.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

import numpy as np

from train.errors import ConfigError

__all__ = [
    "DATAFLOWS",
    "EYERISS",
    "HOROWITZ_45NM",
    "SURFACE_BASIS",
    "TRAFFIC_KEYS",
    "UNIT_TABLES",
    "AcceleratorConfig",
    "AccessCounts",
    "EnergySurface",
    "LayerShape",
    "UnitEnergies",
    "access_counts",
    "energy",
    "energy_breakdown",
    "fit_energy_surface",
    "get_units",
    "layer_energy",
    "network_energy",
    "traffic_breakdown",
]

log = logging.getLogger(__name__)

DATAFLOWS = ("os", "ws", "is")
LAYER_KINDS = ("conv", "linear")
KIB = 1024
# Above this max relative error on the grid (fin, fout >= 1/4) fit_energy_surface logs a warning.
SURFACE_WARN_REL_ERROR = 0.10


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_positive_int(owner: str, name: str, value: object) -> None:
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{owner}: {name} must be a positive integer, got {value!r}")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------------------------
# Layers and the accelerator
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerShape:
    """One MAC-bearing layer of one image, as the accelerator sees it.

    ``kind`` is "conv" or "linear". A linear layer has a 1x1 kernel, stride 1 and a 1x1 "image"
    (``in_channels`` = in_features, ``out_channels`` = out_features); an LSTM cell is described
    by the caller as one linear layer with in = input + hidden and out = 4 * hidden. Spatial
    sizes are those of the unpadded input and of the output (padding is generated on chip).
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    stride: int
    in_h: int
    in_w: int
    out_h: int
    out_w: int
    groups: int = 1

    def __post_init__(self) -> None:
        owner = f"layer {self.name!r}"
        if self.kind not in LAYER_KINDS:
            raise ConfigError(f"{owner}: kind must be one of {LAYER_KINDS}, got {self.kind!r}")
        for f in fields(self):
            if f.name not in ("name", "kind"):
                _check_positive_int(owner, f.name, getattr(self, f.name))
        for name in ("in_channels", "out_channels"):
            value = getattr(self, name)
            if value % self.groups:
                raise ConfigError(
                    f"{owner}: {name}={value!r} is not divisible by groups={self.groups!r}; "
                    "use a channel count that is a multiple of groups"
                )
        if self.kind == "linear":
            spatial = (self.kernel_h, self.kernel_w, self.stride, self.in_h, self.in_w)
            spatial += (self.out_h, self.out_w)
            if spatial != (1,) * 7:
                raise ConfigError(
                    f"{owner}: a linear layer needs kernel, stride and in/out sizes all 1, got "
                    f"(kernel_h, kernel_w, stride, in_h, in_w, out_h, out_w)={spatial!r}"
                )

    @classmethod
    def conv2d(
        cls,
        name: str,
        in_channels: int,
        out_channels: int,
        kernel: int,
        in_hw: tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> LayerShape:
        """A square-kernel convolution; the output size follows from padding and stride."""
        in_h, in_w = in_hw
        out_h = (in_h + 2 * padding - kernel) // stride + 1
        out_w = (in_w + 2 * padding - kernel) // stride + 1
        return cls(name, "conv", in_channels, out_channels, kernel, kernel, stride,
                   in_h, in_w, out_h, out_w, groups)  # fmt: skip

    @classmethod
    def linear(cls, name: str, in_features: int, out_features: int) -> LayerShape:
        return cls(name, "linear", in_features, out_features, 1, 1, 1, 1, 1, 1, 1)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one image (linear: in * out)."""
        kernel = self.kernel_h * self.kernel_w
        per_output = (self.in_channels // self.groups) * kernel
        return self.out_h * self.out_w * self.out_channels * per_output

    @property
    def gemm(self) -> tuple[int, int, int]:
        """(M, K, N) of one group's GEMM: output pixels, reduction length, filters."""
        m = self.out_h * self.out_w
        k = self.kernel_h * self.kernel_w * (self.in_channels // self.groups)
        return m, k, self.out_channels // self.groups


@dataclass(frozen=True)
class AcceleratorConfig:
    """A systolic-array accelerator with a three-level memory hierarchy.

    Defaults: a 16 x 16 array (256 PEs, the scale of Eyeriss's 168; CIFAR ResNet widths
    16/32/64 fill whole column folds), output-stationary dataflow (SCALE-Sim's default
    ``configs/scale.cfg``, and the one that keeps 32-bit partial sums inside the PEs: for a
    3x3 16->16 conv on 32x32 it has 3.9x fewer buffer word accesses than ``ws``), and SCALE-Sim's
    default buffers (v1 ``configs/scale.cfg``: IfmapSramSz 512, FilterSramSz 512,
    OfmapSramSz 256, in KiB). Operands are 8-bit words, partial sums 32-bit.
    """

    array_rows: int = 16
    array_cols: int = 16
    dataflow: str = "os"  # "os" output, "ws" weight, "is" input stationary
    ifmap_buffer_bytes: int = 512 * KIB
    filter_buffer_bytes: int = 512 * KIB
    ofmap_buffer_bytes: int = 256 * KIB
    word_bytes: int = 1  # operand (ifmap, weight, final output) width
    psum_bytes: int = 4  # partial-sum (accumulator) width

    def __post_init__(self) -> None:
        owner = "accelerator config"
        if self.dataflow not in DATAFLOWS:
            raise ConfigError(
                f"{owner}: dataflow must be one of {DATAFLOWS} (output, weight, input "
                f"stationary), got {self.dataflow!r}"
            )
        for f in fields(self):
            if f.name != "dataflow":
                _check_positive_int(owner, f.name, getattr(self, f.name))
        if self.psum_bytes % self.word_bytes:
            raise ConfigError(
                f"{owner}: psum_bytes={self.psum_bytes!r} must be a multiple of "
                f"word_bytes={self.word_bytes!r}"
            )

    @property
    def psum_words(self) -> int:
        """Word accesses that one partial-sum access counts as."""
        return self.psum_bytes // self.word_bytes


# --------------------------------------------------------------------------------------------
# Access counts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessCounts:
    """Accesses per level of one layer (or a sum of layers) and its MACs.

    Unit: one access = one word of ``AcceleratorConfig.word_bytes`` moved to or from that level;
    a partial-sum access counts ``psum_bytes // word_bytes`` words. ``dram`` is main memory,
    ``buffer`` the on-chip global buffer (ifmap + filter + ofmap SRAMs), ``rf`` the PE register
    files. Counts are ints from :func:`access_counts`; scaling by a float (an expected count)
    gives floats.
    """

    dram: int | float = 0
    buffer: int | float = 0
    rf: int | float = 0
    macs: int | float = 0

    def __add__(self, other: AccessCounts) -> AccessCounts:
        if not isinstance(other, AccessCounts):
            return NotImplemented
        return AccessCounts(
            self.dram + other.dram,
            self.buffer + other.buffer,
            self.rf + other.rf,
            self.macs + other.macs,
        )

    def __radd__(self, other: object) -> AccessCounts:
        if isinstance(other, (int, float)) and other == 0:  # so that sum(counts) works
            return self
        return NotImplemented

    def __mul__(self, scale: float) -> AccessCounts:
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)):
            return NotImplemented
        return AccessCounts(self.dram * scale, self.buffer * scale, self.rf * scale,
                            self.macs * scale)  # fmt: skip

    __rmul__ = __mul__


def _active(layer: LayerShape, name: str, value: int | None) -> int:
    full = getattr(layer, name)
    if value is None:
        return full
    if not _is_int(value) or not 0 <= value <= full:
        raise ConfigError(
            f"layer {layer.name!r}: active {name} must be an integer in [0, {full}], got {value!r}"
        )
    if value % layer.groups:
        raise ConfigError(
            f"layer {layer.name!r}: active {name}={value!r} must be a multiple of "
            f"groups={layer.groups} (whole groups are thinned evenly)"
        )
    return int(value)


# Names of the terms of traffic_breakdown; a level is the sum of the keys with its prefix.
TRAFFIC_KEYS = (
    "macs",
    "rf_operand_reads",
    "rf_psum_reads",
    "rf_psum_writes",
    "buffer_ifmap_reads",
    "buffer_filter_reads",
    "buffer_ofmap_writes",
    "buffer_psum_reads",
    "buffer_psum_writes",
    "dram_ifmap_reads",
    "dram_filter_reads",
    "dram_ofmap_writes",
    "dram_psum_reads",
    "dram_psum_writes",
)


def _gemm_traffic(
    m: int, k: int, n: int, ifmap_words: int, cfg: AcceleratorConfig
) -> dict[str, int]:
    """Word accesses of one GEMM O[m, n] = I[m, k] @ W[k, n] on the array (one group)."""
    rows, cols, wb, p = cfg.array_rows, cfg.array_cols, cfg.word_bytes, cfg.psum_words
    macs = m * k * n
    filter_words = k * n  # compulsory: every weight once
    ofmap_words = m * n  # compulsory: every output once
    ifmap_fits = ifmap_words * wb <= cfg.ifmap_buffer_bytes
    t: dict[str, int] = dict.fromkeys(TRAFFIC_KEYS, 0)
    t["macs"] = macs
    # RF, every dataflow: per MAC two operand reads, and a partial-sum read and write of p words.
    t["rf_operand_reads"] = 2 * macs
    t["rf_psum_reads"] = p * macs
    t["rf_psum_writes"] = p * macs
    # DRAM writes of the final outputs, once each (requantized to one word at the array edge).
    t["dram_ofmap_writes"] = ofmap_words
    # Buffer writes of the final outputs, once each, on their way to DRAM.
    t["buffer_ofmap_writes"] = ofmap_words

    if cfg.dataflow == "os":
        fold_m = _ceil_div(m, rows)  # row folds: output pixels
        fold_n = _ceil_div(n, cols)  # column folds: filters
        # Each fold streams k ifmap words into each of its rows and k weights into each of its
        # columns; over all folds: every im2col ifmap row once per column fold, every filter
        # column once per row fold. Partial sums never leave the PEs.
        t["buffer_ifmap_reads"] = m * k * fold_n
        t["buffer_filter_reads"] = n * k * fold_m
        # DRAM: the ifmap once if it fits its buffer, else re-streamed once per column fold.
        t["dram_ifmap_reads"] = ifmap_words * (1 if ifmap_fits else fold_n)
        # The k x min(n, C) filter tile of a column fold is kept across its row folds if it
        # fits, else re-fetched once per row fold.
        tile_fits = k * min(n, cols) * wb <= cfg.filter_buffer_bytes
        t["dram_filter_reads"] = filter_words * (1 if tile_fits else fold_m)
        return t

    fold_k = _ceil_div(k, rows)  # row folds: the reduction, in both ws and is
    # Partial sums of the first fold_k - 1 reduction folds are written to the ofmap buffer and
    # read back by the next fold's accumulation at the array edge: p words each way.
    t["buffer_psum_writes"] = (fold_k - 1) * ofmap_words * p
    t["buffer_psum_reads"] = (fold_k - 1) * ofmap_words * p
    if cfg.dataflow == "ws":
        fold_n = _ceil_div(n, cols)  # column folds: filters
        # Each weight is loaded into the array once (the stationary operand, once per fold);
        # all m ifmap rows stream through every fold: k words per row per column fold.
        t["buffer_filter_reads"] = filter_words
        t["buffer_ifmap_reads"] = m * k * fold_n
        t["dram_filter_reads"] = filter_words  # each weight is used in exactly one fold
        t["dram_ifmap_reads"] = ifmap_words * (1 if ifmap_fits else fold_n)
        live_psums = m * min(n, cols)  # partial sums of one column fold
    else:  # "is"
        fold_m = _ceil_div(m, cols)  # column folds: output pixels (ifmap windows)
        # Each im2col ifmap word is loaded into the array once (stationary); all n filters
        # stream through every fold: k words per filter per column fold.
        t["buffer_ifmap_reads"] = m * k
        t["buffer_filter_reads"] = n * k * fold_m
        t["dram_ifmap_reads"] = ifmap_words
        filters_fit = filter_words * wb <= cfg.filter_buffer_bytes
        t["dram_filter_reads"] = filter_words * (1 if filters_fit else fold_m)
        live_psums = min(m, cols) * n  # partial sums of one column fold
    if fold_k > 1 and live_psums * cfg.psum_bytes > cfg.ofmap_buffer_bytes:
        # Spill: the partial sums leave for DRAM after each of the first fold_k - 1 reduction
        # folds and come back for the next one.
        t["dram_psum_writes"] = (fold_k - 1) * ofmap_words * p
        t["dram_psum_reads"] = (fold_k - 1) * ofmap_words * p
    return t


def traffic_breakdown(
    layer: LayerShape,
    cfg: AcceleratorConfig,
    in_channels: int | None = None,
    out_channels: int | None = None,
) -> dict[str, int]:
    """Word accesses of one layer by level, operand and direction (keys: ``TRAFFIC_KEYS``).

    ``in_channels`` / ``out_channels``: how many input channels and filters are active (None:
    all); a grouped layer is thinned evenly over its groups (counts must be multiples of
    ``groups``). Zero active channels on either side computes nothing: all counts are 0.
    """
    cin = _active(layer, "in_channels", in_channels)
    cout = _active(layer, "out_channels", out_channels)
    if cin == 0 or cout == 0:
        return dict.fromkeys(TRAFFIC_KEYS, 0)
    g = layer.groups
    m = layer.out_h * layer.out_w
    k = layer.kernel_h * layer.kernel_w * (cin // g)
    n = cout // g
    ifmap_words = layer.in_h * layer.in_w * (cin // g)  # raw (unpadded) ifmap of one group
    one_group = _gemm_traffic(m, k, n, ifmap_words, cfg)
    return {key: g * value for key, value in one_group.items()}


def access_counts(
    layer: LayerShape,
    cfg: AcceleratorConfig,
    in_channels: int | None = None,
    out_channels: int | None = None,
) -> AccessCounts:
    """Accesses per level (DRAM, global buffer, RF) and MACs of one layer on ``cfg``.

    Optionally for a channel-thinned layer: only ``in_channels`` of the inputs and
    ``out_channels`` of the filters active (None: all; 0: all counts zero). The model and its
    assumptions are in the module docstring; the terms are those of :func:`traffic_breakdown`.
    """
    t = traffic_breakdown(layer, cfg, in_channels, out_channels)
    return AccessCounts(
        dram=sum(v for key, v in t.items() if key.startswith("dram_")),
        buffer=sum(v for key, v in t.items() if key.startswith("buffer_")),
        rf=sum(v for key, v in t.items() if key.startswith("rf_")),
        macs=t["macs"],
    )


# --------------------------------------------------------------------------------------------
# Unit energies
# --------------------------------------------------------------------------------------------

UNIT_KINDS = ("normalized to one MAC", "pJ")


@dataclass(frozen=True)
class UnitEnergies:
    """Energy of one word access per level and of one MAC (``unit``: see ``UNIT_KINDS``)."""

    name: str
    citation: str
    unit: str
    dram: float
    buffer: float
    rf: float
    mac: float

    def __post_init__(self) -> None:
        if self.unit not in UNIT_KINDS:
            raise ConfigError(
                f"unit table {self.name!r}: unit must be one of {UNIT_KINDS}, got {self.unit!r}"
            )
        for key in ("dram", "buffer", "rf", "mac"):
            value = getattr(self, key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"unit table {self.name!r}: {key} must be a finite number >= 0, got {value!r}"
                )


# Chen, Emer, Sze, ISCA 2016, table "Normalized energy cost relative to a MAC operation
# extracted from a commercial 65nm process": DRAM 200x, global buffer 6x, array (inter-PE) 2x,
# RF 1x, ALU (MAC) 1x, per 16-bit access. The array level is not a level of Eq. 6: systolic
# hops are ignored (not folded into the RF level), see the module docstring.
EYERISS = UnitEnergies(
    name="eyeriss",
    citation=(
        "Y.-H. Chen, J. Emer, V. Sze, 'Eyeriss: A Spatial Architecture for Energy-Efficient "
        "Dataflow for Convolutional Neural Networks', ISCA 2016: normalized energy cost relative "
        "to a MAC (65 nm); the inter-PE array level (2x) is ignored"
    ),
    unit="normalized to one MAC",
    dram=200.0,
    buffer=6.0,
    rf=1.0,
    mac=1.0,
)

# M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm,
# priced per 8-bit word (word_bytes = 1, the default; scale the memory terms for other widths).
# MAC: 8-bit integer multiply 0.2 pJ + 32-bit integer add 0.1 pJ, because the accumulator is
#   psum_bytes = 4 wide (the 8-bit add, 0.03 pJ, would drop the accumulation width): 0.3 pJ.
_MAC_PJ = 0.2 + 0.1
# Global buffer: SRAM read of 64 bits is 10 pJ (8 KB), 20 pJ (32 KB), 100 pJ (1 MB). The default
#   buffers are 512 + 512 + 256 KiB banks (1.25 MiB in all); the nearest tabulated size on a log
#   scale is 1 MB: 100 pJ / 8 bytes = 12.5 pJ per byte. (Horowitz's points scale about as
#   sqrt(capacity); that would give 8.8 pJ/B for a 512 KiB bank, so this is the upper end.)
_BUFFER_PJ = 100.0 / 8
# DRAM: 1.3-2.6 nJ per 64 bits; we take the lower end, 1300 pJ / 8 bytes = 162.5 pJ per byte
#   (the often quoted 640 pJ per 32-bit DRAM access is the same figure); the upper end doubles it.
_DRAM_PJ = 1300.0 / 8
# RF: no figure for a sub-KB register file. SRAM energy per access grows about as the square
#   root of capacity in the table above (8 -> 32 KB: x4 capacity, x2 energy; 32 KB -> 1 MB: x32,
#   x5). Scaling the 8 KB point down to a 0.5 KB PE register file (Eyeriss's baseline RF is
#   512 B per PE): 10 pJ * sqrt(0.5 / 8) = 2.5 pJ per 64 bits = 0.3125 pJ per byte, about one
#   MAC, as in Eyeriss's ratio RF : MAC = 1 : 1. (The 8 KB figure, 1.25 pJ/B, is an upper bound.)
_RF_PJ = 10.0 * math.sqrt(0.5 / 8) / 8

HOROWITZ_45NM = UnitEnergies(
    name="horowitz45",
    citation=(
        "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, "
        "45 nm: MAC = 8-bit mult 0.2 pJ + 32-bit add 0.1 pJ; buffer = 1 MB SRAM 100 pJ/64 b; "
        "DRAM = 1.3 nJ/64 b; RF = 8 KB SRAM 10 pJ/64 b scaled by sqrt(0.5 KB / 8 KB); "
        "per 8-bit word"
    ),
    unit="pJ",
    dram=_DRAM_PJ,
    buffer=_BUFFER_PJ,
    rf=_RF_PJ,
    mac=_MAC_PJ,
)

UNIT_TABLES: Mapping[str, UnitEnergies] = {"eyeriss": EYERISS, "horowitz45": HOROWITZ_45NM}


def get_units(name: str) -> UnitEnergies:
    """The unit-energy table registered under ``name`` (see ``UNIT_TABLES``)."""
    try:
        return UNIT_TABLES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown unit-energy table {name!r}; known tables: {', '.join(sorted(UNIT_TABLES))}"
        ) from None


# --------------------------------------------------------------------------------------------
# Eq. 6
# --------------------------------------------------------------------------------------------


def energy_breakdown(counts: AccessCounts, units: UnitEnergies) -> dict[str, float]:
    """Terms of Eq. 6: ``#acc_i * e_i`` per level i and ``#MAC * e_MAC``, in ``units.unit``."""
    return {
        "dram": counts.dram * units.dram,
        "buffer": counts.buffer * units.buffer,
        "rf": counts.rf * units.rf,
        "mac": counts.macs * units.mac,
    }


def energy(counts: AccessCounts, units: UnitEnergies) -> float:
    """Eq. 6: ``E = sum_i #acc_i * e_i + #MAC * e_MAC``, in ``units.unit``."""
    return float(sum(energy_breakdown(counts, units).values()))


def layer_energy(
    layer: LayerShape,
    cfg: AcceleratorConfig,
    units: UnitEnergies,
    in_channels: int | None = None,
    out_channels: int | None = None,
) -> float:
    """Energy of one (optionally channel-thinned) layer, in ``units.unit``."""
    return energy(access_counts(layer, cfg, in_channels, out_channels), units)


def network_energy(
    layers: Iterable[LayerShape], cfg: AcceleratorConfig, units: UnitEnergies
) -> float:
    """Energy of running every layer at full width once (layers run one after the other)."""
    return float(sum(layer_energy(layer, cfg, units) for layer in layers))


# --------------------------------------------------------------------------------------------
# Smooth surrogate for a differentiable resource loss
# --------------------------------------------------------------------------------------------

SURFACE_BASIS = ("1", "fin", "fout", "fin*fout", "fin^2", "fout^2")


@dataclass(frozen=True)
class EnergySurface:
    """Quadratic fit of a layer's energy in the active channel fractions ``fin``, ``fout``.

    ``E(fin, fout) ~ c0 + c1 fin + c2 fout + c3 fin fout + c4 fin^2 + c5 fout^2`` (basis
    ``SURFACE_BASIS``): MACs and RF traffic are bilinear in the channel counts, compulsory DRAM
    traffic is linear plus bilinear (filters), and the fold counts ``ceil(channels / array)``
    are steps that the linear and square terms smooth over. ``__call__`` uses only ``+`` and
    ``*``, so ``fin`` and ``fout`` may be floats or torch tensors (differentiable).
    ``max_rel_error`` is the largest ``|surface - exact| / exact`` over the fitted grid points
    with fin, fout >= 1/4; ``full_energy`` the exact energy at (1, 1), where the fit is exact.
    """

    coeffs: tuple[float, float, float, float, float, float]
    max_rel_error: float
    full_energy: float = 0.0
    unit: str = ""

    def __post_init__(self) -> None:
        if len(self.coeffs) != len(SURFACE_BASIS):
            raise ConfigError(
                f"energy surface: need {len(SURFACE_BASIS)} coefficients for the basis "
                f"{SURFACE_BASIS}, got {self.coeffs!r}"
            )
        # Plain Python floats, so that float * tensor keeps the tensor's dtype and graph.
        object.__setattr__(self, "coeffs", tuple(float(c) for c in self.coeffs))

    def __call__(self, fin, fout):  # floats or torch tensors alike: no annotations
        c0, c1, c2, c3, c4, c5 = self.coeffs
        return c0 + c1 * fin + c2 * fout + c3 * fin * fout + c4 * fin * fin + c5 * fout * fout


def _grid(full: int, groups: int, max_points: int) -> np.ndarray:
    """Active channel counts 1..full (multiples of groups), at most max_points of them."""
    steps = full // groups
    if steps <= max_points:
        counts = np.arange(1, steps + 1)
    else:  # subsample evenly, always keeping the smallest and the full count
        counts = np.unique(np.round(np.linspace(1, steps, max_points)).astype(int))
    return counts * groups


def _basis(fin: np.ndarray, fout: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(fin), fin, fout, fin * fout, fin * fin, fout * fout], axis=1)


def fit_energy_surface(
    layer: LayerShape,
    cfg: AcceleratorConfig,
    units: UnitEnergies,
    max_points_per_axis: int = 64,
) -> EnergySurface:
    """Least-squares fit of :func:`layer_energy` over integer active channel counts.

    The grid is every count 1..C (multiples of ``groups``) of inputs and of filters, subsampled
    to ``max_points_per_axis`` evenly spaced counts per axis when larger. Residuals are relative
    (weighted by 1 / exact energy), and the fit is constrained to be exact at (1, 1) (the
    constant term is eliminated). A max relative error above ``SURFACE_WARN_REL_ERROR`` is
    logged as a warning; it is always reported in ``max_rel_error``.
    """
    if not _is_int(max_points_per_axis) or max_points_per_axis < 2:
        raise ConfigError(
            "fit_energy_surface: max_points_per_axis must be an integer >= 2 (the grid keeps "
            f"the smallest and the full count), got {max_points_per_axis!r}"
        )
    g = layer.groups
    cins = _grid(layer.in_channels, g, max_points_per_axis)
    couts = _grid(layer.out_channels, g, max_points_per_axis)
    ci, co = np.meshgrid(cins, couts, indexing="ij")
    ci, co = ci.ravel(), co.ravel()
    exact = np.array(
        [layer_energy(layer, cfg, units, int(a), int(b)) for a, b in zip(ci, co, strict=True)]
    )
    fin = ci / layer.in_channels
    fout = co / layer.out_channels
    full = layer_energy(layer, cfg, units)
    if full == 0.0:  # an all-zero unit table
        return EnergySurface((0.0,) * 6, 0.0, 0.0, units.unit)
    basis = _basis(fin, fout)
    # Exact at (1, 1): c0 = full - (c1 + ... + c5), so basis @ c - exact
    # = (basis[:, 1:] - 1) @ c[1:] - (exact - full), solved with relative weights 1 / exact.
    weight = 1.0 / exact
    lhs = (basis[:, 1:] - 1.0) * weight[:, None]
    rhs = (exact - full) * weight
    tail, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
    coeffs = np.concatenate([[full - tail.sum()], tail])
    approx = basis @ coeffs
    judged = (fin >= 0.25) & (fout >= 0.25)
    rel = np.abs(approx - exact)[judged] / exact[judged]
    max_rel = float(rel.max()) if rel.size else 0.0
    if max_rel > SURFACE_WARN_REL_ERROR:
        log.warning(
            "energy surface of layer %r: max relative error %.1f%% over fin, fout >= 1/4",
            layer.name,
            100 * max_rel,
        )
    return EnergySurface(tuple(coeffs.tolist()), max_rel, float(full), units.unit)
