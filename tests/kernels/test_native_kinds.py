"""The linear kind ids Python and C++ use come from one table (native_kinds.py): the headers list
the same names, the build passes the ids, and the built library reports what it holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferd.kernels import cpu_ops, native_kinds
from inferd.kernels.native_kinds import LinearKind
from tests.kernels.conftest import levels_to_test

HEADER = Path(native_kinds.__file__).parent / "csrc" / "decode_team.h"


def test_the_header_lists_every_kind_of_the_table() -> None:
    listed = re.search(r"#define INFERD_LINEAR_KINDS\(X\)(.*)", HEADER.read_text()).group(1)
    assert re.findall(r"X\((\w+)\)", listed) == [k.name for k in LinearKind]


def test_the_build_is_given_every_id() -> None:
    assert native_kinds.compile_defines() == [f"-DINFERD_KIND_{k.name}={k.value}" for k in LinearKind]
    level = cpu_ops.cpu_isa.best_level()
    assert all(flag in cpu_ops._cflags(level) for flag in native_kinds.compile_defines())


@pytest.mark.parametrize("level", levels_to_test())
def test_built_libraries_hold_the_table(level: str) -> None:
    ops = cpu_ops.ops_for(level)
    if ops is None:
        pytest.skip(f"the {level} CPU kernels did not build on this machine")
    assert native_kinds.parse_reported(ops.linear_kinds()) == {k.name: k.value for k in LinearKind}
