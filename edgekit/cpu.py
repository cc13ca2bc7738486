"""The CPU instruction set an int8 artifact is made for, and what that means for its weights.

An int8 artifact runs on integer kernels chosen by the CPU that runs it, and those differ in a
way that matters to the quantizer: x86 CPUs without VNNI (SSE4/AVX2, and AVX-512 before
Cascade Lake) multiply u8 activations by s8 weights with ``(V)PMADDUBSW``, which adds pairs of
products into *int16* and saturates when both are large. VNNI (``VPDPBUSD``), AMX and ARM's
int8 instructions accumulate into int32 and do not. So on a CPU without VNNI the quantizers
advise 7-bit weights (ONNX Runtime's ``reduce_range``, NNCF's ``overflow_fix``); elsewhere the
full 8 bits are free accuracy.

:data:`ISAS` names the instruction-set levels a target profile may state as ``isa``;
:func:`detect_isa` reads this machine's from ``/proc/cpuinfo``; :func:`deployment_isa` picks the
one an export is for (the target's, else this machine's). ``EDGEKIT_CPU_ISA`` overrides the
detection (one of :data:`ISAS`): for testing, or for exporting on one machine for another
without writing a target profile. Each backend maps the ISA onto its own quantizer option and
says why in a note; this module holds only the facts about CPUs.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import UsageError

#: ISA level -> what it is (the names a target profile's ``isa`` may take)
ISAS: dict[str, str] = {
    "x86-64": "x86-64 without AVX2 (SSE4 int8 kernels, no VNNI)",
    "x86-avx2": "x86-64 with AVX2, without AVX-512 or VNNI (Haswell to Comet Lake, Zen 1-3)",
    "x86-avx512": "x86-64 with AVX-512 but without VNNI (Skylake-SP/X)",
    "x86-vnni": "x86-64 with AVX512-VNNI or AVX-VNNI (Cascade Lake, Ice Lake, Alder Lake, Zen 4+)",
    "x86-amx": "x86-64 with AMX-INT8 (Sapphire Rapids and later)",
    "arm64": "ARM64 with NEON only (Cortex-A53/A72 class)",
    "arm64-dotprod": "ARM64 with the SDOT/UDOT dot-product instructions (ARMv8.2+)",
    "arm64-i8mm": "ARM64 with the I8MM int8 matrix multiply (ARMv8.6+)",
}
#: the levels whose u8 x s8 kernels add products in int16 and can saturate
SATURATING: frozenset[str] = frozenset({"x86-64", "x86-avx2", "x86-avx512"})
ENV = "EDGEKIT_CPU_ISA"
_CPUINFO = Path("/proc/cpuinfo")


def check_isa(value: str, where: str) -> str:
    """``value`` if it names a known ISA level, else a one-line UsageError naming ``where``."""
    if value not in ISAS:
        raise UsageError(f"{where}: unknown isa '{value}'; choose one of {', '.join(ISAS)}")
    return value


def parse_cpuinfo(text: str, machine: str = "") -> str | None:
    """The ISA level from the text of ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``), or
    None when the text names no flags. ``machine`` (``platform.machine()``) breaks the tie for
    an ARM kernel that prints no Features line."""
    flags: set[str] = set()
    arm = machine.lower() in ("aarch64", "arm64")
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "flags":
            flags = set(value.split())
            break
        if key == "features":
            flags = set(value.split())
            arm = True
            break
    if not flags:
        return "arm64" if arm else None
    if arm:
        if "i8mm" in flags:
            return "arm64-i8mm"
        return "arm64-dotprod" if "asimddp" in flags else "arm64"
    if "amx_int8" in flags and "amx_tile" in flags:
        return "x86-amx"
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "x86-vnni"
    if "avx512f" in flags:
        return "x86-avx512"
    return "x86-avx2" if "avx2" in flags else "x86-64"


def detect_isa() -> str | None:
    """This machine's ISA level: ``$EDGEKIT_CPU_ISA`` if set, else from ``/proc/cpuinfo``; None
    where neither says (not Linux)."""
    forced = os.environ.get(ENV)
    if forced:
        return check_isa(forced, ENV)
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return parse_cpuinfo(text, platform.machine())


@dataclass(frozen=True)
class DeploymentIsa:
    """The ISA an export is made for and where that came from."""

    #: one of ISAS, or None when nothing said (no target isa and an unreadable CPU)
    isa: str | None
    #: "the target profile", "EDGEKIT_CPU_ISA" or "this machine"
    source: str

    @property
    def saturates(self) -> bool:
        """True where u8 x s8 int8 kernels can saturate (x86 without VNNI)."""
        return self.isa in SATURATING

    def describe(self) -> str:
        if self.isa is None:
            return "an unknown CPU (no isa in the target profile, /proc/cpuinfo unreadable)"
        vnni = " (no VNNI)" if self.saturates else ""
        return f"{self.isa}{vnni}, from {self.source}"

    def to_json(self) -> dict[str, str | None]:
        return {"isa": self.isa, "isa_source": self.source}


def deployment_isa(declared: str = "") -> DeploymentIsa:
    """The ISA to quantize for: the target's ``declared`` one, else this machine's."""
    if declared:
        return DeploymentIsa(check_isa(declared, "isa"), "the target profile")
    source = ENV if os.environ.get(ENV) else "this machine"
    return DeploymentIsa(detect_isa(), source)
