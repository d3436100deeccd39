"""benchmarks/arm_model.py without a cross compiler or llvm-mca: the loop extraction from assembly,
the work counted from instructions, the write-back split given to llvm-mca and the regression guard.
(The model itself runs in CI's step of its own, where both tools are installed.)"""

from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import arm_model as am  # noqa: E402

# GCC's layout: a marker, a scalar loop laid out first, then the vector loop the marker names, and a
# loop of the build without markers to compare with.
ASM = """\
f:
\t// ec-mca-loop k 2 0
\tcmp w1, 0
.L1:
\tldr s0, [x0], 4
\tfadd s1, s1, s0
\tsubs w1, w1, 1
\tbne .L1
.L2:
\tldr q0, [x0, x2]
\tfmla v1.4s, v0.4s, v2.4s
\tfmul v3.4s, v0.4s, v2.4s
\tadd x2, x2, 16
\tcmp x2, x3
\tbne .L2
\tret
\t.size f, .-f
"""


def test_extract_loop_takes_the_first_vector_loop_after_the_marker_that_holds_the_needed_mnemonics():
    body = am.extract_loop(ASM, "k 2 0", needs=("fmla",))
    assert body == ["ldr q0, [x0, x2]", "fmla v1.4s, v0.4s, v2.4s", "fmul v3.4s, v0.4s, v2.4s",
                    "add x2, x2, 16", "cmp x2, x3", "bne .L2"]
    assert am.extract_loop(ASM, "k 2 0", needs=("sdot",)) is None
    assert am.extract_loop(ASM, "k 1 0") is None  # another instance's marker
    # the marked loop is one of the loops of the same code without the marker
    assert am._normalize(body) in am.all_loops(ASM.replace("\t// ec-mca-loop k 2 0\n", ""))


def test_a_loop_with_a_branch_inside_is_not_taken_as_one_block():
    asm = ASM.replace("\tfmul v3.4s", "\tb.eq .L9\n\tfmul v3.4s")
    assert am.extract_loop(asm, "k 2 0", needs=("fmla",)) is None


def test_work_counted_from_instructions():
    macs, flops = am.count_work(["sdot v8.4s, v1.16b, v0.4b[1]", "smmla v9.4s, v1.16b, v0.16b",
                                 "smlal2 v10.4s, v1.8h, v0.h[3]", "smull v2.8h, v0.8b, v1.8b", "sadalp v11.4s, v2.8h"])
    assert (macs, flops) == (16 + 32 + 4 + 8, 0)
    assert am.count_work(["fmla v1.4s, v0.4s, v2.4s", "fadd s1, s1, s0", "fdiv v0.4s, v0.4s, v1.4s"]) == (0, 8 + 1 + 4)
    # every peak loop counts what it is meant to: 24 instructions of its kind
    assert am.count_work(am._peak_sdot())[0] == 24 * 16
    assert am.count_work(am._peak_fmla())[1] == 24 * 8


def test_write_back_is_split_into_the_access_and_an_add():
    assert am.split_writeback(["str q0, [x3], 16", "ldp q1, q2, [x4, 32]!", "ld1 {v0.4s}, [x1], x2",
                               "ldr q0, [x3, x0]"]) == [
        "str q0, [x3]", "add x3, x3, 16", "add x4, x4, 32", "ldp q1, q2, [x4]", "ld1 {v0.4s}, [x1]",
        "add x1, x1, x2", "ldr q0, [x3, x0]"]


def _row(label, shares):
    k = am.Kernel(label, "x/x_neon.cc", "x", 1, 0, "sdot", 16)
    return am.Row(k, [], 16, 0, {}, shares, {})


def test_the_guard_fails_on_a_drop_of_more_than_the_allowed_points(tmp_path):
    saved = tmp_path / "shares.json"
    saved.write_text(json.dumps({"shares": {"a": {"V1": 0.90, "A55": None}, "b": {"V1": 0.50}}}))
    ok = [_row("a", {"V1": 0.81, "A55": 0.3}), _row("b", {"V1": 0.70})]
    assert am.check(ok, saved, 10.0) == []
    failures = am.check([_row("a", {"V1": 0.79, "A55": 0.3}), _row("b", {"V1": 0.5})], saved, 10.0)
    assert failures == ["a on V1: 90% -> 79%"]
    assert "not in shares.json" in am.check([_row("c", {"V1": 1.0})], saved, 10.0)[0]
