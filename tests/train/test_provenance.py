"""The machine and package record written with each run (train.provenance)."""

import json
import platform

import torch

from train.provenance import PACKAGES, cpu_model, machine_record

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz
flags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: Another CPU
flags\t\t: fpu
"""


def test_the_record_names_the_first_cpu_its_bf16_flags_and_the_versions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    rec = machine_record(info)
    assert rec["cpu"] == "Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz"
    assert rec["cpu_flags"] == ["amx_bf16", "avx512_bf16", "avx512f"]  # amx_int8 is absent; order of _CPU_FLAGS
    assert set(rec["packages"]) == set(PACKAGES) and rec["packages"]["torch"] == torch.__version__
    assert rec["packages"]["ulrec"] is not None and rec["python"] == platform.python_version()
    assert rec["torch_threads"] == torch.get_num_threads()
    assert json.loads(json.dumps(rec)) == rec  # JSON-ready as it is


def test_without_cpuinfo_the_cpu_is_what_platform_says(tmp_path):
    missing = tmp_path / "nowhere"
    assert cpu_model(missing) == (platform.processor() or platform.machine())
    assert machine_record(missing)["cpu_flags"] == []
