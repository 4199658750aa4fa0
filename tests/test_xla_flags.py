"""The XLA workaround applied on `import mtl` (mtl/xla_flags.py)."""

import os

import pytest

import mtl  # noqa: F401  (applies the workaround to this process)
from mtl import xla_flags


@pytest.mark.parametrize(
    "jaxlib, before, after",
    [
        ("0.10.2", "", "--xla_cpu_experimental_ynn_fusion_type=-reduce"),
        ("0.10.2", "--xla_force_host_platform_device_count=8",
         "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type=-reduce"),
        # The user's own choice of YNN fusions stands.
        ("0.10.2", "--xla_cpu_experimental_ynn_fusion_type=-dot",
         "--xla_cpu_experimental_ynn_fusion_type=-dot"),
        # Another jaxlib may not know the flag, and XLA stops on unknown flags.
        ("0.11.0", "", ""),
    ],
)  # fmt: skip
def test_ynn_reduce_fusions_are_left_out_on_jaxlib_0_10_only(monkeypatch, jaxlib, before, after):
    monkeypatch.setattr(xla_flags.metadata, "version", lambda name: jaxlib)
    environ = {"XLA_FLAGS": before}
    xla_flags.avoid_known_crashes(environ)
    assert environ["XLA_FLAGS"] == after


def test_importing_mtl_set_the_flag_in_this_process():
    if xla_flags.metadata.version("jaxlib").startswith(xla_flags.AFFECTED_JAXLIB):
        assert f"{xla_flags.YNN_FLAG}=-reduce" in os.environ["XLA_FLAGS"]
    else:
        assert xla_flags.YNN_FLAG not in os.environ.get("XLA_FLAGS", "")
