"""powercore: tegrastats lines of every Jetson generation, the total-power rule, INA3221 sysfs layouts,
the Pi 5 PMIC and the sampler's log (the platform state is in test_statecore.py).

The tegrastats lines and PMIC output are copied verbatim from
research/device-benchmarking.md §1.2, §1.6 and §3.5 (each cites its public source); the expected values
were written by reading those lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.runners import powercore

POWERCORE = Path(powercore.__file__)

# -- tegrastats: the verbatim lines of research §1.2 --------------------------------------------------

NANO_JP4 = "RAM 1464/3964MB (lfb 214x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [90%@1479,16%@1479,0%@1479,9%@1479] EMC_FREQ 6%@1600 GR3D_FREQ 7%@768 APE 25 PLL@28C CPU@32C PMIC@50C GPU@28.5C AO@37C thermal@30.25C POM_5V_IN 2746/2911 POM_5V_GPU 159/161 POM_5V_CPU 796/989"  # noqa: E501
NANO_JP461 = "RAM 1923/3964MB (lfb 2x2MB) SWAP 191/1982MB (cached 6MB) IRAM 0/252kB(lfb 252kB) CPU [5%@1224,4%@1224,3%@1224,6%@1224] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@37C CPU@40C PMIC@50C GPU@40C AO@45C thermal@40C POM_5V_IN 1750/1628 POM_5V_GPU 0/0 POM_5V_CPU 366/406"  # noqa: E501
NANO_OFFLINE = """RAM 1409/3964MB (lfb 28x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB)
CPU [22%@518,67%@518,off,off] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25
PLL@28.5C CPU@32C PMIC@50C GPU@30.5C AO@39.5C thermal@31.25C
POM_5V_IN 2003/2003 POM_5V_GPU 0/0 POM_5V_CPU 320/320"""
TX2_NOROOT = "RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,21%@345,25%@345,3%@345,1%@345,1%@345] EMC_FREQ 0% GR3D_FREQ 0% PLL@42.5C MCPU@42.5C PMIC@100C Tboard@40C GPU@41C BCPU@42.5C thermal@41.9C Tdiode@41.25C VDD_SYS_GPU 153/158 VDD_SYS_SOC 536/547 VDD_4V0_WIFI 633/527 VDD_IN 3140/3208 VDD_SYS_CPU 536/590 VDD_SYS_DDR 557/601"  # noqa: E501
TX2_ROOT = "RAM 2344/7852MB (lfb 1154x4MB) SWAP 0/3926MB (cached 0MB) CPU [1%@345,off,off,1%@345,0%@345,2%@345] EMC_FREQ 4%@1600 GR3D_FREQ 0%@624 APE 150 PLL@37.5C MCPU@37.5C PMIC@100C Tboard@32C GPU@35C BCPU@37.5C thermal@36.5C Tdiode@34.25C VDD_SYS_GPU 152/152 VDD_SYS_SOC 687/687 VDD_4V0_WIFI 0/0 VDD_IN 3056/3056 VDD_SYS_CPU 152/152 VDD_SYS_DDR 883/883"  # noqa: E501
AGX_XAVIER_JP42 = "RAM 14700/15692MB (lfb 3x2MB) SWAP 898/8192MB (cached 23MB) CPU [0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190] EMC_FREQ 0% GR3D_FREQ 0% AO@30C GPU@30.5C Tboard@31C Tdiode@32C AUX@30.5C CPU@31.5C thermal@30.8C PMIC@100C GPU 463/463 CPU 618/618 SOC 2936/2936 CV 0/0 VDDRQ 309/309 SYS5V 3306/3306"  # noqa: E501
AGX_XAVIER_ROOT = "RAM 721/31927MB (lfb 7291x4MB) SWAP 0/15963MB (cached 0MB) CPU [2%@1190,0%@1190,0%@1190,0%@1190,off,off,off,off] EMC_FREQ 0%@665 GR3D_FREQ 0%@318 APE 150 MTS fg 0% bg 0% AO@37.5C GPU@37.5C Tdiode@40C PMIC@100C AUX@36C CPU@37.5C thermal@36.9C Tboard@37C GPU 0/0 CPU 311/311 SOC 932/932 CV 0/0 VDDRQ 621/621 SYS5V 1482/1482"  # noqa: E501
XNX_JP411 = "RAM 5246/7771MB (lfb 7x4MB) SWAP 983/20269MB (cached 280MB) CPU [47%@1420,23%@1420,32%@1420,22%@1420,31%@1420,96%@1420] EMC_FREQ 2%@1600 GR3D_FREQ 0%@1109 APE 150 MTS fg 1% bg 9% AO@29C GPU@31.5C PMIC@100C AUX@30C CPU@33.5C thermal@31.35C VDD_IN 6140/5510 VDD_CPU_GPU_CV 2706/2119 VDD_SOC 1074/1051"  # noqa: E501
XNX_JP512 = "07-09-2024 13:31:31 RAM 3168/6851MB (lfb 2x4MB) SWAP 161/3426MB (cached 0MB) CPU [23%@1397,17%@1192,16%@1190,13%@1190,23%@1190,10%@1190] EMC_FREQ 2%@204 GR3D_FREQ 0%@[114] VIC_FREQ 115 APE 150 AUX@45C CPU@46.5C thermal@45.6C AO@45C GPU@45.5C PMIC@50C VDD_IN 2763mW/2846mW VDD_CPU_GPU_CV 650mW/670mW VDD_SOC 650mW/711mW"  # noqa: E501
XNX_JP5_OFFLINE = """RAM 2690/6854MB (lfb 6x1MB) SWAP 479/3427MB (cached 3MB)
CPU [3%@1904,7%@1906,1%@1905,0%@1907,off,off]
EMC_FREQ 0%@1600 GR3D_FREQ 0%@[510] VIC_FREQ 601 APE 150
AUX@39C CPU@39.5C AO@37.5C GPU@37.5C PMIC@50C
VDD_IN 5079mW/5079mW VDD_CPU_GPU_CV 696mW/696mW VDD_SOC 1104mW/1104mW"""
ORIN_NX = "RAM 6334/15388MB (lfb 1770x4MB) SWAP 491/7694MB (cached 0MB) CPU [6%@729,9%@729,5%@729,16%@729,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@611 VIC_FREQ 729 APE 174 CV0@45.812C CPU@47.937C SOC2@46.093C SOC0@46.968C CV1@46.406C GPU@45.875C tj@48.875C SOC1@48.875C CV2@45.75C VDD_IN 5299mW/5299mW VDD_CPU_GPU_CV 773mW/773mW VDD_SOC 1424mW/1424mW"  # noqa: E501
ORIN_NANO_ROOT = "11-15-2024 08:38:09 RAM 6185/7620MB (lfb 8x2MB) SWAP 851/3810MB (cached 1MB) CPU [15%@729,11%@729,14%@729,13%@729,11%@729,8%@729] EMC_FREQ 43%@2133 GR3D_FREQ 63%@[621] NVDEC off NVJPG off NVJPG1 off VIC off OFA off APE 200 cpu@53.968C soc2@52.437C soc0@50.75C gpu@53.343C tj@53.968C soc1@51.656C VDD_IN 12479mW/12479mW VDD_CPU_GPU_CV 4667mW/4667mW VDD_SOC 2817mW/2817mW"  # noqa: E501
ORIN_NANO_NOROOT = "06-18-2025 11:25:24 RAM 3452/7620MB (lfb 25x4MB) SWAP 1518/16384MB (cached 174MB) CPU [1%@1420,2%@1420,0%@1420,2%@1420,2%@729,1%@729] GR3D_FREQ 0% cpu@50.031C soc2@49.031C soc0@50C gpu@49.031C tj@50.25C soc1@50.25C VDD_IN 4824mW/4824mW VDD_CPU_GPU_CV 518mW/518mW VDD_SOC 1475mW/1475mW"  # noqa: E501
AGX_ORIN_JP50 = "01-03-2023 16:07:54 RAM 2257/30536MB (lfb 5392x4MB) SWAP 0/15268MB (cached 0MB) CPU [N%@729,...12 cores...] EMC_FREQ 0%@204 GR3D_FREQ N%@0 GR3D2_FREQ N%@0 NVJPG1 729 VIC_FREQ 115 APE 233 CV0@-256C CPU@41.437C Tboard@29C SOC2@39.062C Tdiode@30.75C SOC0@39.031C CV1@-256C GPU@-256C tj@41.656C SOC1@38.937C CV2@-256C VDD_GPU_SOC 2390mW/2390mW VDD_CPU_CV 796mW/796mW VIN_SYS_5V0 3522mW/3522mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW"  # noqa: E501
AGX_ORIN_R36 = "RAM 29114/30697MB (lfb 3x4MB)    SWAP 4915/15348MB (cached 1MB) CPU [3%@729,4%@729,0%@729,1%@729,0%@2201,100%@2201,1%@2201,0%@2201,100%@2201,0%@2201,0%@2201,0%@2201] EMC_FREQ 1%@2133 GR3D_FREQ 0%@[305,305] NVENC      off  NVDEC    off NVJPG off NVJPG1    off         VIC        off          OFA           off          NVDLA0    off       NVDLA1     off          PVA0_FREQ off         APE           174        cpu@53.062C soc2@48.25C soc0@48.843C  gpu@47.812C tj@53.062C soc1@48.968C    VDD_GPU_SOC 3205mW/3205mW VDD_CPU_CV 4405mW/4405mW VIN_SYS_5V0 4767mW/4767mW"  # noqa: E501
AGX_ORIN_JP72 = "07-25-2026 09:08:28 RAM 20642/62817MB (lfb 1x2MB) CPU [23%@2201,10%@2201,4%@2201,14%@2201,30%@2201,18%@2201,10%@2201,10%@2201,33%@2201,7%@2201,5%@2201,27%@2201] EMC_FREQ 3%@3199 GR3D_FREQ 12%@[1300,1300] NVENC0 off NVDEC0 off NVJPG0 off NVJPG1 off VIC off OFA off NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 cpu@52.968C/52.968C soc2@48.406C/48.406C soc0@49.531C/49.531C gpu@47.625C/47.625C VDD_GPU_SOC 5139mW/5139mW/5139mW VDD_CPU_CV 3268mW/3268mW/3268mW VIN_SYS_5V0 5500mW/5500mW/5500mW"  # noqa: E501

POM = ("POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU")
TX2_RAILS = ("VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI", "VDD_IN", "VDD_SYS_CPU", "VDD_SYS_DDR")
XAVIER_RAILS = ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V")
NX_RAILS = ("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC")
ORIN_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")


def rails(names, pairs):
    return {n: {"cur_mw": c, "avg_mw": a} for n, (c, a) in zip(names, pairs, strict=True)}


def zones(names, values):
    return dict(zip(names.split(), values, strict=True))


# (line, rails, temps, total W, scope starts with)
CASES = {
    "nano-jp4": (
        NANO_JP4,
        rails(POM, [(2746, 2911), (159, 161), (796, 989)]),
        zones("PLL CPU GPU AO thermal", [28, 32, 28.5, 37, 30.25]),
        2.746,
        "POM_5V_IN (module input",
    ),
    "nano-jp461": (
        NANO_JP461,
        rails(POM, [(1750, 1628), (0, 0), (366, 406)]),
        zones("PLL CPU GPU AO thermal", [37, 40, 40, 45, 40]),
        1.750,
        "POM_5V_IN (module input",
    ),
    "nano-cores-offline-wrapped": (
        NANO_OFFLINE,
        rails(POM, [(2003, 2003), (0, 0), (320, 320)]),
        zones("PLL CPU GPU AO thermal", [28.5, 32, 30.5, 39.5, 31.25]),
        2.003,
        "POM_5V_IN (module input",
    ),
    "tx2-nonroot": (
        TX2_NOROOT,
        rails(TX2_RAILS, [(153, 158), (536, 547), (633, 527), (3140, 3208), (536, 590), (557, 601)]),
        zones("PLL MCPU Tboard GPU BCPU thermal Tdiode", [42.5, 42.5, 40, 41, 42.5, 41.9, 41.25]),
        3.140,
        "VDD_IN (module input",
    ),
    "tx2-root": (
        TX2_ROOT,
        rails(TX2_RAILS, [(152, 152), (687, 687), (0, 0), (3056, 3056), (152, 152), (883, 883)]),
        zones("PLL MCPU Tboard GPU BCPU thermal Tdiode", [37.5, 37.5, 32, 35, 37.5, 36.5, 34.25]),
        3.056,
        "VDD_IN (module input",
    ),
    "agx-xavier-jp42": (
        AGX_XAVIER_JP42,
        rails(XAVIER_RAILS, [(463, 463), (618, 618), (2936, 2936), (0, 0), (309, 309), (3306, 3306)]),
        zones("AO GPU Tboard Tdiode AUX CPU thermal", [30, 30.5, 31, 32, 30.5, 31.5, 30.8]),
        7.632,
        "GPU + CPU + SOC + CV + VDDRQ + SYS5V (AGX Xavier",
    ),
    "agx-xavier-root": (
        AGX_XAVIER_ROOT,
        rails(XAVIER_RAILS, [(0, 0), (311, 311), (932, 932), (0, 0), (621, 621), (1482, 1482)]),
        zones("AO GPU Tdiode AUX CPU thermal Tboard", [37.5, 37.5, 40, 36, 37.5, 36.9, 37]),
        3.346,
        "GPU + CPU + SOC + CV + VDDRQ + SYS5V (AGX Xavier",
    ),
    "xavier-nx-jp411": (
        XNX_JP411,
        rails(NX_RAILS, [(6140, 5510), (2706, 2119), (1074, 1051)]),
        zones("AO GPU AUX CPU thermal", [29, 31.5, 30, 33.5, 31.35]),
        6.140,
        "VDD_IN (module input",
    ),
    "xavier-nx-jp512": (
        XNX_JP512,
        rails(NX_RAILS, [(2763, 2846), (650, 670), (650, 711)]),
        zones("AUX CPU thermal AO GPU", [45, 46.5, 45.6, 45, 45.5]),
        2.763,
        "VDD_IN (module input",
    ),
    "xavier-nx-jp5-offline-wrapped": (
        XNX_JP5_OFFLINE,
        rails(NX_RAILS, [(5079, 5079), (696, 696), (1104, 1104)]),
        zones("AUX CPU AO GPU", [39, 39.5, 37.5, 37.5]),
        5.079,
        "VDD_IN (module input",
    ),
    "orin-nx-jp5": (
        ORIN_NX,
        rails(NX_RAILS, [(5299, 5299), (773, 773), (1424, 1424)]),
        zones(
            "CV0 CPU SOC2 SOC0 CV1 GPU tj SOC1 CV2",
            [45.812, 47.937, 46.093, 46.968, 46.406, 45.875, 48.875, 48.875, 45.75],
        ),
        5.299,
        "VDD_IN (module input",
    ),
    "orin-nano-jp6-root": (
        ORIN_NANO_ROOT,
        rails(NX_RAILS, [(12479, 12479), (4667, 4667), (2817, 2817)]),
        zones("cpu soc2 soc0 gpu tj soc1", [53.968, 52.437, 50.75, 53.343, 53.968, 51.656]),
        12.479,
        "VDD_IN (module input",
    ),
    "orin-nano-jp6-nonroot": (
        ORIN_NANO_NOROOT,
        rails(NX_RAILS, [(4824, 4824), (518, 518), (1475, 1475)]),
        zones("cpu soc2 soc0 gpu tj soc1", [50.031, 49.031, 50, 49.031, 50.25, 50.25]),
        4.824,
        "VDD_IN (module input",
    ),
    "agx-orin-jp50": (
        AGX_ORIN_JP50,
        {
            **rails(ORIN_RAILS, [(2390, 2390), (796, 796), (3522, 3522)]),
            "NC": {"cur_mw": 0, "avg_mw": 0},
            "VDDQ_VDD2_1V8AO": {"cur_mw": 301, "avg_mw": 301},
        },
        zones(
            "CV0 CPU Tboard SOC2 Tdiode SOC0 CV1 GPU tj SOC1 CV2",
            [None, 41.437, 29, 39.062, 30.75, 39.031, None, None, 41.656, 38.937, None],
        ),
        6.708,
        "VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 (AGX Orin",
    ),
    "agx-orin-r36-irregular-spaces": (
        AGX_ORIN_R36,
        rails(ORIN_RAILS, [(3205, 3205), (4405, 4405), (4767, 4767)]),
        zones("cpu soc2 soc0 gpu tj soc1", [53.062, 48.25, 48.843, 47.812, 53.062, 48.968]),
        12.377,
        "VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 (AGX Orin",
    ),
    "agx-orin-jp72-three-values": (
        AGX_ORIN_JP72,
        rails(ORIN_RAILS, [(5139, 5139), (3268, 3268), (5500, 5500)]),
        zones("cpu soc2 soc0 gpu", [52.968, 48.406, 49.531, 47.625]),
        13.907,
        "VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 (AGX Orin",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_every_research_line_gives_its_rails_and_temperatures(case):
    line, want_rails, want_temps, _, _ = CASES[case]
    got = powercore.parse_tegrastats(line)
    assert got["rails"] == want_rails
    assert got["temps"] == want_temps
    assert "PMIC" not in got["temps"]
    assert not {"RAM", "SWAP", "IRAM", "lfb"} & set(got["rails"])
    values = {v for r in got["rails"].values() for v in r.values()}
    assert not {2023, 2024, 2025, 2026} & values  # the date prefix never leaks in as a value


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_total_power_follows_the_module_rule(case):
    line, _, _, want_w, scope_start = CASES[case]
    watts, scope = powercore.total_power_w(powercore.parse_tegrastats(line)["rails"])
    assert watts == pytest.approx(want_w, abs=1e-9)
    assert scope.startswith(scope_start)
    assert "carrier and USB not included" in scope


def test_cpu_cores_loads_frequencies_and_offline_cores():
    nano = powercore.parse_tegrastats(NANO_OFFLINE)["cpu"]
    assert nano == [
        {"load": 22, "mhz": 518, "online": True},
        {"load": 67, "mhz": 518, "online": True},
        {"load": None, "mhz": None, "online": False},
        {"load": None, "mhz": None, "online": False},
    ]
    nx = powercore.parse_tegrastats(XNX_JP512)["cpu"]
    assert [c["load"] for c in nx] == [23, 17, 16, 13, 23, 10]
    assert [c["mhz"] for c in nx] == [1397, 1192, 1190, 1190, 1190, 1190]
    assert len(powercore.parse_tegrastats(AGX_ORIN_R36)["cpu"]) == 12
    # The research's JP5.0 Orin line has placeholders: N% is no load, the elided "..." is no core.
    assert powercore.parse_tegrastats(AGX_ORIN_JP50)["cpu"] == [{"load": None, "mhz": 729, "online": True}]
    legacy = powercore.parse_tegrastats("CPU [10%,20%,off]@1734")["cpu"]
    assert [(c["load"], c["mhz"], c["online"]) for c in legacy] == [
        (10, 1734, True),
        (20, 1734, True),
        (None, None, False),
    ]


@pytest.mark.parametrize(
    ("line", "gr3d", "emc"),
    [
        (NANO_JP4, {"load": 7, "mhz": [768]}, {"load": 6, "mhz": 1600}),
        (TX2_NOROOT, {"load": 0, "mhz": []}, {"load": 0, "mhz": None}),
        (XNX_JP512, {"load": 0, "mhz": [114]}, {"load": 2, "mhz": 204}),
        (ORIN_NANO_ROOT, {"load": 63, "mhz": [621]}, {"load": 43, "mhz": 2133}),
        (ORIN_NANO_NOROOT, {"load": 0, "mhz": []}, None),
        (AGX_ORIN_R36, {"load": 0, "mhz": [305, 305]}, {"load": 1, "mhz": 2133}),
        (AGX_ORIN_JP72, {"load": 12, "mhz": [1300, 1300]}, {"load": 3, "mhz": 3199}),
        ("GR3D_FREQ @[1000,1000,1000] NVENC0_FREQ @1556", {"load": None, "mhz": [1000, 1000, 1000]}, None),
    ],
)
def test_gpu_and_memory_controller_forms(line, gr3d, emc):
    got = powercore.parse_tegrastats(line)
    assert got["gr3d"] == gr3d
    assert got.get("emc") == emc


def test_memory_and_early_orin_second_gpc():
    assert powercore.parse_tegrastats(NANO_JP4)["ram_mb"] == (1464, 3964)
    assert powercore.parse_tegrastats(AGX_ORIN_R36)["swap_mb"] == (4915, 15348)
    assert "swap_mb" not in powercore.parse_tegrastats(AGX_ORIN_JP72)
    orin = powercore.parse_tegrastats(AGX_ORIN_JP50)
    assert orin["gr3d2"] == {"load": None, "mhz": [0]}


def test_older_tx2_rail_names_and_a_line_without_rails():
    old = powercore.parse_tegrastats(
        "VDD_IN 1038/1134 VDD_CPU 153/153 VDD_GPU 153/153 VDD_SOC 384/384 VDD_WIFI 38/124 VDD_DDR 192/192"
    )
    assert powercore.total_power_w(old["rails"])[0] == pytest.approx(1.038)
    assert powercore.parse_tegrastats("RAM 1409/3964MB (lfb 28x4MB) EMC_FREQ 0% GR3D_FREQ 37%")["rails"] == {}


# -- total power: explicit rails, fallback, errors ------------------------------------------------------


def test_total_power_sums_exactly_the_rails_asked_for():
    parsed = powercore.parse_tegrastats(XNX_JP512)["rails"]
    watts, scope = powercore.total_power_w(parsed, ["VDD_CPU_GPU_CV", "VDD_SOC"])
    assert watts == pytest.approx(1.300)
    assert scope.startswith("VDD_CPU_GPU_CV + VDD_SOC (rails asked for")
    with pytest.raises(ValueError, match=r"VDD_GPU, VDD_X not reported .*VDD_IN, VDD_CPU_GPU_CV, VDD_SOC"):
        powercore.total_power_w(parsed, ["VDD_GPU", "VDD_SOC", "VDD_X"])


def test_total_power_of_an_unknown_module_sums_all_but_nc_and_needs_a_rail():
    watts, scope = powercore.total_power_w({"A_RAIL": 1000.0, "NC": 50.0, "B_RAIL": {"cur_mw": 500}})
    assert watts == pytest.approx(1.5)
    assert scope.startswith("A_RAIL + B_RAIL (sum of all reported rails")
    partial_orin = powercore.parse_tegrastats("VDD_GPU_SOC 3205mW/3205mW VDD_CPU_CV 4405mW/4405mW")["rails"]
    assert powercore.total_power_w(partial_orin)[0] == pytest.approx(7.610)
    for empty in ({}, {"NC": 0}):
        with pytest.raises(ValueError, match="no power rails"):
            powercore.total_power_w(empty)


# -- INA3221 sysfs ----------------------------------------------------------------------------------------


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def hwmon_device(root: Path, device: str, hwmon: str, channels: dict[int, tuple[str, int, int]]) -> None:
    base = root / "sys/bus/i2c/drivers/ina3221" / device / "hwmon" / hwmon
    for ch, (label, mv, ma) in channels.items():
        write(base / f"in{ch}_label", label + "\n")
        write(base / f"in{ch}_input", f"{mv}\n")
        write(base / f"curr{ch}_input", f"{ma}\n")
    write(base / "in7_label", "sum of shunt voltages\n")
    write(base / "in7_input", "0\n")
    write(base / "curr7_input", "0\n")


def test_ina3221_hwmon_layout_of_an_agx_orin_any_hwmon_index(tmp_path):
    hwmon_device(
        tmp_path,
        "1-0040",
        "hwmon5",
        {1: ("VDD_GPU_SOC", 19000, 200), 2: ("VDD_CPU_CV", 19000, 100), 3: ("VIN_SYS_5V0", 5000, 700)},
    )
    hwmon_device(
        tmp_path, "1-0041", "hwmon6", {1: ("NC", 0, 0), 2: ("VDDQ_VDD2_1V8AO", 5000, 60), 3: ("NC", 0, 0)}
    )
    channels = powercore.find_ina3221(str(tmp_path))
    assert [c["rail"] for c in channels] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    assert {c["layout"] for c in channels} == {"hwmon"}
    mw = powercore.read_ina3221(channels)
    assert mw == {
        "VDD_GPU_SOC": 3800.0,
        "VDD_CPU_CV": 1900.0,
        "VIN_SYS_5V0": 3500.0,
        "VDDQ_VDD2_1V8AO": 300.0,
    }
    assert powercore.total_power_w(mw)[0] == pytest.approx(9.2)  # VDDQ is fed from VIN_SYS_5V0


def test_ina3221_iio_layout_both_directory_names(tmp_path):
    nano = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for ch, (name, mw) in enumerate([("POM_5V_IN", 2746), ("POM_5V_GPU", 159), ("POM_5V_CPU", 796)]):
        write(nano / f"rail_name_{ch}", name + "\n")
        write(nano / f"in_power{ch}_input", f"{mw}\n")
        write(nano / f"in_voltage{ch}_input", "5000\n")
        write(nano / f"in_current{ch}_input", "1\n")
        write(nano / f"crit_current_limit_{ch}", "3600\n")
    tx2 = tmp_path / "sys/bus/i2c/drivers/ina3221x/0-0041/iio_device"
    write(tx2 / "rail_name_0", "VDD_IN\n")
    write(tx2 / "in_voltage0_input", "19000\n")  # no in_power: P from V x I
    write(tx2 / "in_current0_input", "160\n")
    channels = powercore.find_ina3221(str(tmp_path))
    assert [(c["rail"], c["layout"]) for c in channels] == [
        ("VDD_IN", "iio"),
        ("POM_5V_IN", "iio"),
        ("POM_5V_GPU", "iio"),
        ("POM_5V_CPU", "iio"),
    ]
    assert powercore.read_ina3221(channels) == {
        "VDD_IN": 3040.0,
        "POM_5V_IN": 2746.0,
        "POM_5V_GPU": 159.0,
        "POM_5V_CPU": 796.0,
    }


def test_ina3221_absent_and_unreadable(tmp_path):
    assert powercore.find_ina3221(str(tmp_path)) == []
    hwmon_device(tmp_path, "7-0040", "hwmon0", {1: ("VDD_IN", 5000, 1000)})
    channels = powercore.find_ina3221(str(tmp_path))
    Path(channels[0]["current"]).unlink()
    with pytest.raises(OSError):
        powercore.read_ina3221(channels)


# -- Raspberry Pi 5 PMIC and tool outputs ----------------------------------------------------------------

PMIC_TEXT = """\
 3V7_WL_SW_A current(0)=0.00000000A
   3V3_SYS_A current(1)=0.06245952A
   1V8_SYS_A current(2)=0.16102850A
  DDR_VDD2_A current(3)=0.00780744A
  DDR_VDDQ_A current(4)=0.00000000A
   1V1_SYS_A current(5)=0.17566740A
    0V8_SW_A current(6)=0.32791250A
  VDD_CORE_A current(7)=10.87674000A
   3V3_DAC_A current(17)=0.00036630A
   3V3_ADC_A current(18)=0.00042735A
   0V8_AON_A current(16)=0.00579975A
      HDMI_A current(22)=0.01367520A
 3V7_WL_SW_V volt(8)=3.79999600V
   3V3_SYS_V volt(9)=3.30632200V
   1V8_SYS_V volt(10)=1.79828900V
  DDR_VDD2_V volt(11)=1.10292900V
  DDR_VDDQ_V volt(12)=0.60476130V
   1V1_SYS_V volt(13)=1.10439400V
    0V8_SW_V volt(14)=0.80256330V
  VDD_CORE_V volt(15)=0.89745940V
   3V3_DAC_V volt(20)=3.30494200V
   3V3_ADC_V volt(21)=3.30219400V
   0V8_AON_V volt(19)=0.79736190V
      HDMI_V volt(23)=5.07056000V
     EXT5V_V volt(24)=5.06788000V
      BATT_V volt(25)=3.01110800V
"""


def test_pmic_pairs_current_and_voltage_by_name_not_position():
    got = powercore.parse_pmic_adc(PMIC_TEXT)
    assert len(got["rails"]) == 12
    assert "EXT5V" not in got["rails"] and "BATT" not in got["rails"]
    assert got["rails"]["VDD_CORE"] == pytest.approx(10.87674 * 0.8974594)
    assert got["rails"]["HDMI"] == pytest.approx(0.0136752 * 5.07056)
    assert got["rails"]["0V8_AON"] == pytest.approx(0.00579975 * 0.7973619)  # ADC 16 pairs with 19
    assert got["total_w"] == pytest.approx(10.7999, abs=1e-4)  # the 12 V x I products, summed by hand
    assert got["input_v"] == pytest.approx(5.06788)
    shuffled = "\n".join(reversed(PMIC_TEXT.splitlines()))
    again = powercore.parse_pmic_adc(shuffled)
    assert again["rails"] == got["rails"] and again["total_w"] == pytest.approx(got["total_w"])
    assert powercore.parse_pmic_adc('error=2 error_msg="Command not registered"')["rails"] == {}


def test_read_power_log_skips_a_cut_line():
    text = (
        '{"sensor":"ina3221","interval_ms":50,"scope":"VDD_IN","clock":"monotonic","pid":1}\n'
        '{"t":1.0,"w":5.0,"rails":{"VDD_IN":5000}}\n{"t":1.05,"w":5.1,"rai'
    )
    header, samples = powercore.read_power_log(text)
    assert header["sensor"] == "ina3221" and samples == [(1.0, 5.0)]
