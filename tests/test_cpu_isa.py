"""The deployment ISA: /proc/cpuinfo read into an ISA level, and each backend's int8 weight
scheme chosen from it (ORT's reduce_range, NNCF's overflow fix), an explicit recipe value
winning, and the note and sidecar saying which.

The cpuinfo inputs are captured text of real machines (trimmed to the lines the parser reads
plus their neighbours). This machine's detection is checked against numpy's CPUID probe, an
independent reader of the same hardware bits. The schemes are checked in the artifacts'
weights: ORT's 7-bit symmetric int8 weights peak at 64, NNCF's at 63, full 8-bit at 127."""

from __future__ import annotations

import json
import platform

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_models import conv_model

import edgekit
from edgekit.cpu import ENV, ISAS, SATURATING, deployment_isa, detect_isa, parse_cpuinfo
from edgekit.errors import UsageError

# This machine when the test was written (AMD EPYC under a hypervisor): AVX2, no AVX-512.
EPYC_AVX2 = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc \
rep_good nopl xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni \
pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt \
tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy \
cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp \
vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap \
clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr wbnoinvd \
arat umip pku ospke vaes vpclmulqdq rdpid fsrm
bugs		: sysret_ss_attrs null_seg spectre_v1 spectre_v2 spec_store_bypass
"""
# Intel Core i7-8700 (Coffee Lake): AVX2 only.
I7_8700 = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm \
constant_tsc art arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc cpuid \
aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma \
cx16 xtpr pdcm pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes \
xsave avx f16c rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb invpcid_single \
pti ssbd ibrs ibpb stibp tpr_shadow vnmi flexpriority ept vpid ept_ad fsgsbase \
tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm mpx rdseed adx smap \
clflushopt intel_pt xsaveopt xsavec xgetbv1 xsaves dtherm ida arat pln pts hwp \
hwp_notify hwp_act_window hwp_epp md_clear flush_l1d
"""
# Intel Xeon Platinum 8175M (Skylake-SP, AWS m5): AVX-512 without VNNI.
XEON_SKYLAKE = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl \
xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq ssse3 fma cx16 pcid sse4_1 \
sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand \
hypervisor lahf_lm abm 3dnowprefetch invpcid_single pti fsgsbase tsc_adjust bmi1 \
hle avx2 smep bmi2 erms invpcid rtm mpx avx512f avx512dq rdseed adx smap \
clflushopt clwb avx512cd avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves ida \
arat pku ospke
"""
# Intel Xeon Platinum 8275CL (Cascade Lake, AWS c5): AVX512-VNNI.
XEON_CASCADE = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8275CL CPU @ 3.00GHz
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl \
xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq ssse3 fma \
cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx \
f16c rdrand hypervisor lahf_lm abm 3dnowprefetch invpcid_single pti fsgsbase \
tsc_adjust bmi1 avx2 smep bmi2 erms invpcid mpx avx512f avx512dq rdseed adx smap \
clflushopt clwb avx512cd avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves ida \
arat pku ospke avx512_vnni
"""
# Intel Xeon Platinum 8488C (Sapphire Rapids, AWS m7i): AMX.
XEON_SPR = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8488C
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc avx2 avx512f \
avx512dq avx512ifma avx512cd avx512bw avx512vl avx_vnni avx512_bf16 avx512vbmi \
umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni \
avx512_bitalg tme avx512_vpopcntdq rdpid cldemote movdiri movdir64b md_clear \
serialize amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities
"""
# Raspberry Pi 4 (Cortex-A72): NEON only.
PI4 = """processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3
"""
# Raspberry Pi 5 (Cortex-A76): dot product.
PI5 = """processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU part	: 0xd0b
"""
# AWS Graviton3 (Neoverse V1): I8MM.
GRAVITON3 = """processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc \
flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer	: 0x41
CPU part	: 0xd40
"""


@pytest.mark.parametrize(
    ("text", "machine", "isa"),
    [
        (EPYC_AVX2, "x86_64", "x86-avx2"),
        (I7_8700, "x86_64", "x86-avx2"),
        (XEON_SKYLAKE, "x86_64", "x86-avx512"),
        (XEON_CASCADE, "x86_64", "x86-vnni"),
        (XEON_SPR, "x86_64", "x86-amx"),
        (PI4, "aarch64", "arm64"),
        (PI5, "aarch64", "arm64-dotprod"),
        (GRAVITON3, "aarch64", "arm64-i8mm"),
        ("processor\t: 0\n", "aarch64", "arm64"),
        ("", "x86_64", None),
    ],
    ids=["epyc", "i7-8700", "skylake-sp", "cascade-lake", "sapphire-rapids", "pi4", "pi5",
         "graviton3", "arm-no-features", "empty"],
)  # fmt: skip
def test_cpuinfo_parse(text, machine, isa):
    assert parse_cpuinfo(text, machine) == isa


def test_saturating_levels_are_the_x86_ones_without_vnni():
    assert {"x86-64", "x86-avx2", "x86-avx512"} == SATURATING
    assert set(ISAS) > SATURATING


@pytest.mark.skipif(platform.machine() != "x86_64", reason="numpy's CPUID names are x86 ones")
def test_this_machine_agrees_with_cpuid(monkeypatch):
    from numpy._core._multiarray_umath import __cpu_features__ as cpuid

    monkeypatch.delenv(ENV, raising=False)
    isa = detect_isa()
    vnni = cpuid.get("AVX512VNNI", False) or cpuid.get("AVXVNNI", False)
    assert (isa in SATURATING) == (not vnni)
    assert (isa == "x86-avx512") == (cpuid["AVX512F"] and not vnni)
    assert (isa == "x86-64") == (not cpuid["AVX2"])


def test_env_override(monkeypatch):
    monkeypatch.setenv(ENV, "arm64-i8mm")
    assert detect_isa() == "arm64-i8mm"
    assert deployment_isa().source == ENV
    # a target's isa wins over both the machine and the override
    assert deployment_isa("x86-vnni").isa == "x86-vnni"
    monkeypatch.setenv(ENV, "pentium")
    with pytest.raises(UsageError, match=f"{ENV}: unknown isa 'pentium'"):
        detect_isa()


# ---------------------------------------------------------------- schemes in the artifacts


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    path = tmp_path_factory.mktemp("isa") / "conv.onnx"
    onnx.save(conv_model(weight), str(path))
    calib = [{"x": rng.standard_normal((1, 2, 6, 6)).astype(np.float32)} for _ in range(8)]
    return path, calib


def _ort_weight_peak(path) -> int:
    model = onnx.load(str(path))
    # the int8 initializers are the weight and its zero points; the weight is the big one
    w = max(
        (numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == 3),
        key=np.size,
    )
    return int(np.abs(w.astype(np.int32)).max())


def _export(conv, target, tmp_path, **fields):
    path, calib = conv
    report = edgekit.export(
        path, target, "int8", output_dir=tmp_path, calibration=calib, eval_samples=0, **fields
    )
    return report, json.loads(report.sidecar.read_text())["backend_details"]


@pytest.mark.parametrize(
    ("target", "env", "fields", "peak", "source", "words"),
    [
        ("onnxruntime-novnni", "x86-vnni", {}, 64, "the target profile", "reduce_range 7-bit"),
        ("onnxruntime", "x86-avx2", {}, 64, ENV, "reduce_range 7-bit"),
        ("onnxruntime", "x86-vnni", {}, 127, ENV, "full 8-bit weights (VNNI"),
        ("onnxruntime", "arm64-dotprod", {}, 127, ENV, "full 8-bit weights (ARM"),
        ("onnxruntime-novnni", None, {"reduce_range": False}, 127, "the target profile",
         "set explicitly"),
        ("onnxruntime", "x86-vnni", {"reduce_range": True}, 64, ENV, "set explicitly"),
    ],
)  # fmt: skip
def test_ort_scheme(conv, tmp_path, monkeypatch, target, env, fields, peak, source, words):
    if env:
        monkeypatch.setenv(ENV, env)
    report, details = _export(conv, target, tmp_path, **fields)
    assert _ort_weight_peak(report.artifact) == peak
    scheme = details["scheme"]
    assert scheme["isa_source"] == source
    assert scheme["reduce_range"] is (peak == 64)
    assert scheme["reduce_range_from"] == ("recipe" if fields else "isa")
    (note,) = (n for n in report.notes if n.startswith("int8 scheme"))
    assert words in note and scheme["isa"] in note


def test_ort_dynamic_follows_the_isa(conv, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "x86-avx512")
    report = edgekit.export(conv[0], "onnxruntime", "int8-dynamic", output_dir=tmp_path)
    details = json.loads(report.sidecar.read_text())["backend_details"]
    assert details["scheme"]["reduce_range"] is True
    assert any("x86-avx512 (no VNNI)" in n for n in report.notes)


@pytest.mark.parametrize(
    ("target", "env", "fields", "fix", "peak"),
    [
        ("openvino", "x86-avx2", {}, "first_layer_only", 63),
        ("openvino", "x86-amx", {}, "disable", 127),
        ("intel-cpu", "x86-avx2", {}, "disable", 127),
        ("intel-cpu", None, {"reduce_range": True}, "enable", 63),
    ],
)
def test_openvino_overflow_fix(conv, tmp_path, monkeypatch, target, env, fields, fix, peak):
    ov = pytest.importorskip("openvino")
    if env:
        monkeypatch.setenv(ENV, env)
    report, details = _export(conv, target, tmp_path, **fields)
    quant = details["quantization"]
    assert quant["overflow_fix"] == fix
    assert quant["scheme"]["overflow_fix_from"] == ("recipe" if fields else "isa")
    model = ov.Core().read_model(str(report.artifact))
    (w,) = (
        op.get_data()
        for op in model.get_ops()
        if op.get_type_name() == "Constant"
        and op.get_output_element_type(0).get_type_name() == "i8"
    )
    assert int(np.abs(w.astype(np.int32)).max()) == peak
    assert any(n.startswith("int8 scheme") for n in report.notes)


# ---------------------------------------------------------------- speed check (edgekit.speed_check)


def _matmul_chain(path, layers: int, extra: int = 0) -> None:
    """y = a chain of ``layers`` 256x256 MatMul+Relu on x[64, 256]; ``extra`` more layers on a
    second output, which every run computes (the engineered slow branch)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def chain(start: str, count: int, prefix: str) -> str:
        cur = start
        for i in range(count):
            w = f"{prefix}w{i}"
            inits.append(numpy_helper.from_array(
                (rng.standard_normal((256, 256)) / 16).astype(np.float32), w))  # fmt: skip
            nodes.append(onnx.helper.make_node("MatMul", [cur, w], [f"{prefix}m{i}"]))
            nodes.append(onnx.helper.make_node("Relu", [f"{prefix}m{i}"], [f"{prefix}r{i}"]))
            cur = f"{prefix}r{i}"
        return cur

    outputs = [chain("x", layers, "a")]
    if extra:
        outputs.append(chain("x", extra, "b"))
    graph = onnx.helper.make_graph(
        nodes,
        "chain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64, 256])],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
        initializer=inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_speed_check_with_real_sessions(tmp_path):
    """Timing asserts only on an engineered 9x difference; the equal pair asserts the verdict
    (not slower), which needs a slowdown beyond both its confidence bound and the noise."""
    import shutil

    from edgekit.backends.onnxruntime.session import OrtSession
    from edgekit.speed_check import compare_speed

    _matmul_chain(tmp_path / "a.onnx", 4)
    shutil.copyfile(tmp_path / "a.onnx", tmp_path / "copy.onnx")
    _matmul_chain(tmp_path / "slow.onnx", 4, extra=32)
    feeds = {"x": np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)}
    fp32 = OrtSession(tmp_path / "a.onnx", threads=1)
    same = compare_speed(fp32, OrtSession(tmp_path / "copy.onnx", threads=1), feeds, budget_s=1)
    assert same.skipped is None and not same.slower, same.describe()
    slow = compare_speed(fp32, OrtSession(tmp_path / "slow.onnx", threads=1), feeds, budget_s=1)
    assert slow.slower and slow.ratio > 3, slow.describe()
    assert slow.pairs >= 5 and "slower than FP32" in slow.describe()


def test_speed_check_skips_a_tiny_model(tmp_path):
    from edgekit.backends.onnxruntime.session import OrtSession
    from edgekit.speed_check import compare_speed

    path = tmp_path / "tiny.onnx"
    onnx.save(conv_model(np.ones((1, 1, 1, 1), np.float32), (1, 1, 1, 1)), str(path))
    session = OrtSession(path, threads=1)
    check = compare_speed(session, session, {"x": np.ones((1, 1, 1, 1), np.float32)})
    assert check.skipped and not check.slower and check.ratio is None
