"""Tests of the Eq. 6 energy model: hand-checked counts, invariants, unit tables, surrogate."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train.energy import (
    DATAFLOWS,
    EYERISS,
    HOROWITZ_45NM,
    UNIT_TABLES,
    AcceleratorConfig,
    AccessCounts,
    EnergySurface,
    LayerShape,
    UnitEnergies,
    access_counts,
    energy,
    energy_breakdown,
    fit_energy_surface,
    get_units,
    layer_energy,
    network_energy,
    traffic_breakdown,
)
from train.errors import ConfigError

# The tiny layer: a 1x1 conv, 3 -> 3 channels on a 2x2 image, on a 2x2 array.
# GEMM: M = 4 output pixels, K = 3, N = 3; MACs = 36. Compulsory DRAM words: ifmap 2*2*3 = 12,
# filters 3*3 = 9, ofmap 2*2*3 = 12. psum_bytes = 4, word_bytes = 1: a psum access is 4 words,
# so the RF sees 2 + 4 + 4 = 10 words per MAC = 360.
TINY = LayerShape("tiny", "conv", 3, 3, 1, 1, 1, 2, 2, 2, 2)
BIG = 1 << 20


def tiny_cfg(
    dataflow: str, ifmap: int = BIG, filt: int = BIG, ofmap: int = BIG
) -> AcceleratorConfig:
    return AcceleratorConfig(
        array_rows=2,
        array_cols=2,
        dataflow=dataflow,
        ifmap_buffer_bytes=ifmap,
        filter_buffer_bytes=filt,
        ofmap_buffer_bytes=ofmap,
    )


# Hand-worked counts of TINY with buffers large enough for everything:
# os: folds ceil(4/2) = 2 (M) x ceil(3/2) = 2 (N). ifmap reads M*K per N fold = 12 * 2 = 24;
#     filter reads N*K per M fold = 9 * 2 = 18; ofmap writes 12. Buffer 54.
# ws: folds ceil(3/2) = 2 (K) x 2 (N). filter reads 9 (once); ifmap reads 12 * 2 = 24; ofmap 12;
#     psums of the first K fold written and read back: 12 outputs * 4 words each way = 48 + 48.
#     Buffer 9 + 24 + 12 + 96 = 141.
# is: folds 2 (K) x ceil(4/2) = 2 (M). ifmap reads 12 (once); filter reads 9 * 2 = 18; ofmap 12;
#     psums 48 + 48. Buffer 12 + 18 + 12 + 96 = 138.
HAND = {
    "os": AccessCounts(dram=33, buffer=54, rf=360, macs=36),
    "ws": AccessCounts(dram=33, buffer=141, rf=360, macs=36),
    "is": AccessCounts(dram=33, buffer=138, rf=360, macs=36),
}
# With 8-byte buffers: the ifmap (12 B) does not fit, nor do the filters (9 B) in "is", nor the
# live psums (ws: M*min(N,C)*4 = 32 B; is: min(M,C)*N*4 = 24 B).
# os: ifmap re-fetched per N fold 12*2 = 24; filter tile K*min(N,C) = 6 B fits: 9; ofmap 12 -> 45.
# ws: ifmap 24; filters 9; ofmap 12; psum spill 48 + 48 -> 141.
# is: ifmap 12; filters re-fetched per M fold 9*2 = 18; ofmap 12; psum spill 96 -> 138.
HAND_DRAM_SMALL = {"os": 45, "ws": 141, "is": 138}


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_tiny_layer_hand_counts(dataflow: str) -> None:
    assert access_counts(TINY, tiny_cfg(dataflow)) == HAND[dataflow]


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_tiny_layer_small_buffers_hand_dram(dataflow: str) -> None:
    counts = access_counts(TINY, tiny_cfg(dataflow, 8, 8, 8))
    assert counts.dram == HAND_DRAM_SMALL[dataflow]
    assert counts.buffer == HAND[dataflow].buffer  # buffer-side traffic does not depend on size


def test_tiny_layer_os_filter_tile_refetch() -> None:
    # A 4-byte filter buffer cannot hold the 6-byte tile: filters come once per M fold: 9*2.
    t = traffic_breakdown(TINY, tiny_cfg("os", filt=4))
    assert t["dram_filter_reads"] == 18


def test_tiny_layer_breakdown_terms() -> None:
    t = traffic_breakdown(TINY, tiny_cfg("ws"))
    assert t["buffer_filter_reads"] == 9
    assert t["buffer_ifmap_reads"] == 24
    assert t["buffer_psum_writes"] == t["buffer_psum_reads"] == 48
    assert t["rf_operand_reads"] == 72
    assert t["rf_psum_reads"] == t["rf_psum_writes"] == 144


def test_narrow_psums_give_eyeriss_four_rf_accesses_per_mac() -> None:
    cfg = dataclasses.replace(tiny_cfg("os"), psum_bytes=1)
    assert access_counts(TINY, cfg).rf == 4 * TINY.macs


def test_tiny_layer_energy_eyeriss_hand_sum() -> None:
    # 33 DRAM * 200 + 54 buffer * 6 + 360 RF * 1 + 36 MAC * 1
    counts = access_counts(TINY, tiny_cfg("os"))
    assert energy(counts, EYERISS) == 33 * 200 + 54 * 6 + 360 + 36 == 7320
    assert energy_breakdown(counts, EYERISS) == {"dram": 6600, "buffer": 324, "rf": 360, "mac": 36}
    assert layer_energy(TINY, tiny_cfg("os"), EYERISS) == 7320


def test_horowitz_table_derivation() -> None:
    assert HOROWITZ_45NM.unit == "pJ"
    assert HOROWITZ_45NM.mac == pytest.approx(0.3)
    assert HOROWITZ_45NM.buffer == pytest.approx(12.5)
    assert HOROWITZ_45NM.dram == pytest.approx(162.5)
    assert HOROWITZ_45NM.rf == pytest.approx(0.3125)
    assert "Horowitz" in HOROWITZ_45NM.citation and "ISSCC 2014" in HOROWITZ_45NM.citation
    assert "Eyeriss" in EYERISS.citation and "ISCA 2016" in EYERISS.citation


def test_unit_tables_registry() -> None:
    assert get_units("eyeriss") is EYERISS
    assert get_units("horowitz45") is HOROWITZ_45NM
    assert set(UNIT_TABLES) == {"eyeriss", "horowitz45"}
    with pytest.raises(ConfigError, match=r"'nope'.*eyeriss, horowitz45"):
        get_units("nope")


@pytest.mark.parametrize("layer", [TINY, LayerShape.conv2d("c", 16, 32, 3, (32, 32), 2, 1)])
@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_full_layer_macs(layer: LayerShape, dataflow: str) -> None:
    assert access_counts(layer, AcceleratorConfig(dataflow=dataflow)).macs == layer.macs


def test_layer_shape_macs_and_gemm() -> None:
    conv = LayerShape.conv2d("c", 16, 16, 3, (32, 32), 1, 1)
    assert (conv.out_h, conv.out_w) == (32, 32)
    assert conv.macs == 32 * 32 * 16 * 16 * 9
    assert conv.gemm == (1024, 144, 16)
    lstm = LayerShape.linear("lstm", 10 + 10, 4 * 10)
    assert lstm.macs == 20 * 40 and lstm.gemm == (1, 20, 40)
    dw = LayerShape.conv2d("dw", 8, 8, 3, (4, 4), 1, 1, groups=8)
    assert dw.macs == 4 * 4 * 8 * 9 and dw.gemm == (16, 9, 1)
    assert access_counts(dw, AcceleratorConfig()).macs == dw.macs


def test_counts_arithmetic() -> None:
    a = AccessCounts(1, 2, 3, 4)
    assert a + a == AccessCounts(2, 4, 6, 8) == 2 * a == a * 2
    assert sum([a, a, a]) == 3 * a
    assert a * 0.5 == AccessCounts(0.5, 1.0, 1.5, 2.0)


def test_network_energy_is_sum_of_layers() -> None:
    layers = [
        TINY,
        LayerShape.conv2d("c", 3, 16, 3, (32, 32), 1, 1),
        LayerShape.linear("fc", 64, 10),
    ]
    cfg = AcceleratorConfig()
    total = network_energy(layers, cfg, HOROWITZ_45NM)
    assert total == pytest.approx(sum(layer_energy(x, cfg, HOROWITZ_45NM) for x in layers))
    counts = sum(access_counts(x, cfg) for x in layers)
    assert energy(counts, HOROWITZ_45NM) == pytest.approx(total)


def test_default_dataflow_keeps_psums_in_pes() -> None:
    layer = LayerShape.conv2d("c", 16, 16, 3, (32, 32), 1, 1)
    os_, ws = (access_counts(layer, AcceleratorConfig(dataflow=d)) for d in ("os", "ws"))
    assert AcceleratorConfig().dataflow == "os"
    assert os_.buffer < ws.buffer


def test_module_imports_no_torch() -> None:
    code = "import sys, train.energy; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ invalid configuration


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"dataflow": "rs"}, "'rs'"),
        ({"array_rows": 0}, "array_rows"),
        ({"array_cols": 2.5}, "2.5"),
        ({"ifmap_buffer_bytes": -1}, "-1"),
        ({"word_bytes": True}, "True"),
        ({"word_bytes": 2, "psum_bytes": 3}, "psum_bytes=3"),
    ],
)
def test_invalid_accelerator_config(kwargs: dict, bad: str) -> None:
    with pytest.raises(ConfigError, match=bad):
        AcceleratorConfig(**kwargs)


@pytest.mark.parametrize(
    ("args", "bad"),
    [
        (("x", "fc", 3, 3, 1, 1, 1, 2, 2, 2, 2), "'fc'"),
        (("x", "conv", 0, 3, 1, 1, 1, 2, 2, 2, 2), "in_channels.*0"),
        (("x", "conv", 3, 3, 1, 1, 1, 2, 2, 2, 2, 2), "in_channels=3.*groups=2"),
        (("x", "linear", 3, 3, 3, 3, 1, 1, 1, 1, 1), r"\(3, 3, 1, 1, 1, 1, 1\)"),
        (("x", "conv", 3, 3, 1, 1, 1, 2, 2, 2, "2"), "'2'"),
    ],
)
def test_invalid_layer_shape(args: tuple, bad: str) -> None:
    with pytest.raises(ConfigError, match=bad):
        LayerShape(*args)


@pytest.mark.parametrize(
    ("cin", "cout", "bad"), [(4, None, "4"), (-1, None, "-1"), (None, 1.5, "1.5")]
)
def test_invalid_active_channels(cin: object, cout: object, bad: str) -> None:
    with pytest.raises(ConfigError, match=bad):
        access_counts(TINY, AcceleratorConfig(), cin, cout)


def test_invalid_unit_table() -> None:
    with pytest.raises(ConfigError, match="-1"):
        UnitEnergies("x", "none", "pJ", -1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="'nJ'"):
        UnitEnergies("x", "none", "nJ", 1.0, 1.0, 1.0, 1.0)


# ------------------------------------------------------------------ invariants, by hypothesis

# No example database: nothing is written into the working tree.
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, database=None)


@st.composite
def layers(draw: st.DrawFn) -> LayerShape:
    if draw(st.booleans()):
        return LayerShape.linear("fc", draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 6))
    cout = groups * draw(st.integers(1, 6))
    kernel = draw(st.integers(1, 3))
    size = draw(st.integers(1, 6))
    stride = draw(st.integers(1, 2))
    return LayerShape.conv2d("c", cin, cout, kernel, (size, size), stride, kernel // 2, groups)


@st.composite
def configs(draw: st.DrawFn) -> AcceleratorConfig:
    word = draw(st.sampled_from([1, 2]))
    buffers = st.one_of(st.integers(1, 300), st.just(BIG))
    return AcceleratorConfig(
        array_rows=draw(st.integers(1, 5)),
        array_cols=draw(st.integers(1, 5)),
        dataflow=draw(st.sampled_from(DATAFLOWS)),
        ifmap_buffer_bytes=draw(buffers),
        filter_buffer_bytes=draw(buffers),
        ofmap_buffer_bytes=draw(buffers),
        word_bytes=word,
        psum_bytes=word * draw(st.sampled_from([1, 2, 4])),
    )


def active(draw: st.DrawFn, full: int, groups: int, upto: int | None = None) -> int:
    return groups * draw(st.integers(0, (full if upto is None else upto) // groups))


def as_tuple(c: AccessCounts) -> tuple:
    return (c.dram, c.buffer, c.rf, c.macs)


@PROPERTY_SETTINGS
@given(layer=layers(), cfg=configs())
def test_property_full_layer(layer: LayerShape, cfg: AcceleratorConfig) -> None:
    counts = access_counts(layer, cfg)
    assert counts.macs == layer.macs
    compulsory = (
        layer.in_h * layer.in_w * layer.in_channels
        + layer.macs // (layer.out_h * layer.out_w)  # every weight once
        + layer.out_h * layer.out_w * layer.out_channels
    )
    assert counts.dram >= compulsory
    assert counts.buffer >= layer.macs // (layer.out_h * layer.out_w)  # each weight enters once
    assert counts.rf == layer.macs * (2 + 2 * cfg.psum_words)
    for units in UNIT_TABLES.values():
        assert energy(counts, units) > 0


@PROPERTY_SETTINGS
@given(layer=layers(), cfg=configs(), data=st.data())
def test_property_thinning_never_raises_counts(
    layer: LayerShape, cfg: AcceleratorConfig, data: st.DataObject
) -> None:
    g = layer.groups
    cin = active(data.draw, layer.in_channels, g)
    cout = active(data.draw, layer.out_channels, g)
    cin2 = active(data.draw, layer.in_channels, g, upto=cin)
    cout2 = active(data.draw, layer.out_channels, g, upto=cout)
    full = as_tuple(access_counts(layer, cfg))
    thin = as_tuple(access_counts(layer, cfg, cin, cout))
    thinner = as_tuple(access_counts(layer, cfg, cin2, cout2))
    assert all(a <= b for a, b in zip(thin, full, strict=True))
    assert all(a <= b for a, b in zip(thinner, thin, strict=True))
    if cin and cout:
        assert access_counts(layer, cfg, cin, cout).macs == layer.macs * cin * cout // (
            layer.in_channels * layer.out_channels
        )
    zero = AccessCounts(0, 0, 0, 0)
    assert access_counts(layer, cfg, 0, None) == zero
    assert access_counts(layer, cfg, None, 0) == zero
    assert layer_energy(layer, cfg, EYERISS, 0, 0) == 0


@PROPERTY_SETTINGS
@given(layer=layers(), cfg=configs(), data=st.data())
def test_property_smaller_buffers_never_lower_dram(
    layer: LayerShape, cfg: AcceleratorConfig, data: st.DataObject
) -> None:
    smaller = dataclasses.replace(
        cfg,
        ifmap_buffer_bytes=data.draw(st.integers(1, cfg.ifmap_buffer_bytes)),
        filter_buffer_bytes=data.draw(st.integers(1, cfg.filter_buffer_bytes)),
        ofmap_buffer_bytes=data.draw(st.integers(1, cfg.ofmap_buffer_bytes)),
    )
    big, small = access_counts(layer, cfg), access_counts(layer, smaller)
    assert small.dram >= big.dram
    assert (small.buffer, small.rf, small.macs) == (big.buffer, big.rf, big.macs)


# ------------------------------------------------------------------ the smooth surrogate

SURFACE_LAYERS = [
    LayerShape.conv2d("c16", 16, 16, 3, (32, 32), 1, 1),
    LayerShape.conv2d("c64", 64, 64, 3, (8, 8), 1, 1),
    LayerShape.conv2d("down", 16, 32, 3, (32, 32), 2, 1),
    LayerShape.linear("lstm", 20, 40),
]


@pytest.mark.parametrize("layer", SURFACE_LAYERS, ids=lambda x: x.name)
@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("units", [EYERISS, HOROWITZ_45NM], ids=lambda u: u.name)
def test_surface_within_stated_error(layer: LayerShape, dataflow: str, units: UnitEnergies) -> None:
    cfg = AcceleratorConfig(dataflow=dataflow)
    surface = fit_energy_surface(layer, cfg, units)
    full = layer_energy(layer, cfg, units)
    assert surface.full_energy == full and surface.unit == units.unit
    assert surface(1.0, 1.0) == pytest.approx(full, rel=1e-9)
    assert surface.max_rel_error < 0.10  # measured: at most about 6% on these layers
    # Every grid point with fin, fout >= 1/4 (these layers are not subsampled) is within the bound.
    worst = 0.0
    for cin in range(math.ceil(layer.in_channels / 4), layer.in_channels + 1):
        for cout in range(math.ceil(layer.out_channels / 4), layer.out_channels + 1):
            exact = layer_energy(layer, cfg, units, cin, cout)
            approx = surface(cin / layer.in_channels, cout / layer.out_channels)
            worst = max(worst, abs(approx - exact) / exact)
    assert worst <= surface.max_rel_error + 1e-12
    assert worst == pytest.approx(surface.max_rel_error, rel=1e-9)


def test_surface_subsamples_large_layers() -> None:
    layer = LayerShape.conv2d("wide", 256, 256, 3, (8, 8), 1, 1)
    surface = fit_energy_surface(layer, AcceleratorConfig(), HOROWITZ_45NM, max_points_per_axis=9)
    assert surface(1.0, 1.0) == pytest.approx(
        layer_energy(layer, AcceleratorConfig(), HOROWITZ_45NM)
    )
    assert 0 <= surface.max_rel_error < 0.10


def test_surface_on_torch_tensors_with_gradients() -> None:
    torch = pytest.importorskip("torch")
    layer = SURFACE_LAYERS[1]
    surface = fit_energy_surface(layer, AcceleratorConfig(), EYERISS)
    fin = torch.tensor([0.25, 0.5, 1.0], requires_grad=True)
    fout = torch.tensor([1.0, 0.75, 1.0], dtype=torch.float32, requires_grad=True)
    value = surface(fin, fout)
    assert isinstance(value, torch.Tensor) and value.dtype == torch.float32
    expected = [
        surface(float(a), float(b)) for a, b in zip(fin.tolist(), fout.tolist(), strict=True)
    ]
    assert value.tolist() == pytest.approx(expected, rel=1e-5)
    value.sum().backward()
    _, c1, c2, c3, c4, c5 = surface.coeffs
    d_fin = c1 + c3 * fout.detach() + 2 * c4 * fin.detach()
    d_fout = c2 + c3 * fin.detach() + 2 * c5 * fout.detach()
    assert torch.allclose(fin.grad, d_fin, rtol=1e-5)
    assert torch.allclose(fout.grad, d_fout, rtol=1e-5)


def test_surface_rejects_wrong_basis_size() -> None:
    with pytest.raises(ConfigError, match=r"\(1.0, 2.0\)"):
        EnergySurface((1.0, 2.0), 0.0)  # type: ignore[arg-type]
