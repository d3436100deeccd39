"""Cutting a program into head and tail (edgecompress.engine.split): head then tail equals the whole
program bit for bit at every cut of its order; the wire codec's bounds; bad cuts and bad messages."""

from __future__ import annotations

import numpy as np
import pytest

import edgecompress as ec
from edgecompress.engine import cuts, decode, encode, split
from edgecompress.engine.builder import GraphBuilder


def _dag_program(rng):
    """Two branches joined by a residual add, a norm, an int8 and a float product: a DAG, not a chain."""
    g = GraphBuilder()
    x = g.input("x", "float32", ("batch", "seq", 24))
    mask = g.input("mask", "int64", ("batch", "seq"))
    a = g.linear(x, ec.Int8Weight.from_float(rng.standard_normal((24, 24)).astype(np.float32)), None, "a", activation="gelu")
    b = g.linear(x, rng.standard_normal((24, 24)).astype(np.float32), rng.standard_normal(24).astype(np.float32), "b")
    h, s = g.op("layernorm", [a, b, g.weight("gamma", np.ones(24, np.float32))], "ln", n_outputs=2, eps=1e-5)
    r = g.op("add", [h, s], "res")
    c = g.linear(r, rng.standard_normal((8, 24)).astype(np.float32), None, "c", activation="relu")
    pooled = g.op("mean_pool", [c, mask], "pool")
    return g.program([pooled], {}), (rng.standard_normal((2, 5, 24)).astype(np.float32),
                                     np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))


def test_every_cut_of_the_order_reproduces_the_program(rng=np.random.default_rng(0)):
    prog, (x, mask) = _dag_program(rng)
    whole = prog(x, mask)
    all_cuts = cuts(prog, x, mask)
    assert [c.after for c in all_cuts] == list(range(len(prog.nodes) - 1))
    assert all(c.nbytes > 0 for c in all_cuts)
    for c in all_cuts:
        head, tail = split(prog, list(c.values), x, mask)
        mid = head(**{i.name: v for i, v in zip(prog.inputs, (x, mask)) if i.name in {j.name for j in head.inputs}})
        mid = mid if isinstance(mid, tuple) else (mid,)
        feed = dict(zip(c.values, mid))
        for name, v in (("x", x), ("mask", mask)):  # program inputs the tail reads itself
            if name in {i.name for i in tail.inputs}:
                feed[name] = v
        np.testing.assert_array_equal(tail(**feed), whole)


def test_the_tail_takes_other_sizes(rng=np.random.default_rng(1)):
    prog, (x, mask) = _dag_program(rng)
    head, tail = split(prog, ["c"], x, mask)
    x2, m2 = rng.standard_normal((3, 7, 24)).astype(np.float32), np.ones((3, 7), np.int64)
    np.testing.assert_array_equal(tail(c=head(x=x2), mask=m2), prog(x2, m2))


def test_bad_cuts_are_clear(rng=np.random.default_rng(2)):
    prog, (x, mask) = _dag_program(rng)
    with pytest.raises(ValueError, match=r"tail also needs ln:1"):
        split(prog, ["ln:0"], x, mask)  # the residual add reads the norm's sum too
    head, tail = split(prog, ["a"], x, mask)  # valid: b is recomputed from x on the tail's side
    assert {i.name for i in tail.inputs} == {"a", "x", "mask"}
    with pytest.raises(ValueError, match="not a value computed"):
        split(prog, ["nope"], x, mask)
    with pytest.raises(ValueError, match="not a value computed"):
        split(prog, ["x"], x, mask)
    with pytest.raises(TypeError, match="value names"):
        split(prog, "c", x, mask)
    with pytest.raises(ValueError, match="program outputs"):
        split(prog, ["pool"], x, mask)


@pytest.mark.parametrize("codec", [None, "zstd", "lz4"])
def test_wire_codec(codec, rng=np.random.default_rng(3)):
    if codec is not None:
        pytest.importorskip({"zstd": "zstandard", "lz4": "lz4"}[codec])
    a = (rng.standard_normal((16, 9, 33)) * rng.uniform(0.01, 10, 33)).astype(np.float32)
    assert np.array_equal(decode(encode(a, "fp32", codec)), a)
    assert np.array_equal(decode(encode(a, "fp16", codec)), a.astype(np.float16).astype(np.float32))
    q = encode(a, "int8", codec)
    back = decode(q)
    scale = np.abs(a.reshape(-1, 33)).max(axis=0) / 127
    assert (np.abs(back - a) <= scale / 2 + 1e-6 * np.abs(a)).all()
    if codec is None:
        assert len(q) < a.nbytes / 3.5  # int8 plus one scale per channel
    ids = rng.integers(0, 1 << 40, (3, 7))
    assert np.array_equal(decode(encode(ids, "int8", codec)), ids)  # ids stay exact


@pytest.mark.parametrize("bad", [b"", b"ECW1", b"XXXX\x00\x00\x00\x00", b"ECW1\xff\xff\xff\xff{}",
                                 b'ECW1\x02\x00\x00\x00{}', b'ECW1\x40\x00\x00\x00{"dtype": "float32", "shape": [99999999999], "mode": "raw", "codec": null}'])
def test_bad_messages_are_value_errors(bad):
    with pytest.raises(ValueError):
        decode(bad)


def test_truncated_and_bombed_messages(rng=np.random.default_rng(4)):
    a = rng.standard_normal((8, 16)).astype(np.float32)
    for codec in (None, "zstd", "lz4"):
        try:
            data = encode(a, "int8", codec)
        except ValueError:  # the codec's package is not installed
            continue
        for cut in (len(data) - 1, len(data) // 2, 12):
            with pytest.raises(ValueError):
                decode(data[:cut])
    zstandard = pytest.importorskip("zstandard")
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))  # 64 MB of zeros in a few KB
    header = b'{"dtype": "float32", "shape": [4], "mode": "raw", "codec": "zstd"}'
    with pytest.raises(ValueError):
        decode(b"ECW1" + len(header).to_bytes(4, "little") + header + bomb)


def test_an_exported_encoder_splits_at_every_cut():
    """A small BERT exported to a program (packed tokens, views, attention): head + tail equal the
    whole at every cut of its order."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from edgecompress import engine

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                           intermediate_size=64, vocab_size=100,
                                                           max_position_embeddings=32)).eval()
    ids = np.random.default_rng(0).integers(0, 100, (2, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    prog = engine.export(model, {"input_ids": ids, "attention_mask": mask}, recipe="int8")
    whole = prog(ids, mask)
    inputs = {"input_ids": ids, "attention_mask": mask}
    checked = 0
    for c in cuts(prog, ids, mask):
        head, tail = split(prog, list(c.values), ids, mask)
        mid = head(**{i.name: inputs[i.name] for i in head.inputs})
        feed = dict(zip(c.values, mid if isinstance(mid, tuple) else (mid,)))
        feed.update({i.name: inputs[i.name] for i in tail.inputs if i.name in inputs})
        np.testing.assert_array_equal(tail(**feed), whole)
        checked += 1
    assert checked == len(prog.nodes) - 1


def test_an_exported_cnn_splits_at_every_cut():
    """A small CNN with a pooled, flattened head (a view of a view): every cut of its order, float and
    static int8, head + tail equal to the whole."""
    torch = pytest.importorskip("torch")
    from edgecompress import engine

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)
    for recipe in (None, "int8-static"):
        prog = engine.export(model, torch.from_numpy(x), recipe, faster=False)
        whole = prog(x)
        all_cuts = cuts(prog, x)
        for c in all_cuts:
            head, tail = split(prog, list(c.values), x)
            mid = head(x)
            np.testing.assert_array_equal(tail(**dict(zip(c.values, mid if isinstance(mid, tuple) else (mid,)))), whole)
        assert len(all_cuts) == len(prog.nodes) - 1


def test_a_cnn_returning_a_flattened_feature_map_splits_where_the_tail_computes():
    """The output is a view (flatten) of the last value: the cut before the view, whose tail could only
    reshape its input, is left out of cuts() and refused by split(); every other cut reproduces the
    program."""
    torch = pytest.importorskip("torch")
    from edgecompress import engine

    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.Flatten()).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)
    prog = engine.export(model, torch.from_numpy(x))
    whole = prog(x)
    assert whole.shape == (1, 8 * 5 * 5)
    all_cuts = cuts(prog, x)
    assert len(all_cuts) == len(prog.nodes) - 2  # every cut but the one before the flatten's reshape
    for c in all_cuts:
        head, tail = split(prog, list(c.values), x)
        np.testing.assert_array_equal(tail(**{c.values[0]: head(x)}), whole)
    base = prog.nodes[-1].inputs[0]
    with pytest.raises(ValueError, match=f"is a view \\(reshape\\) of '{base}', which the cut sends to the tail"):
        split(prog, [base], x)


def test_the_planner_picks_edge_cloud_or_split(rng=np.random.default_rng(5)):
    from edgecompress.engine import plan

    prog, (x, mask) = _dag_program(rng)
    n = len(prog.nodes)
    names = [nd.name for nd in prog.nodes]
    # a server 1000x faster than the device: a fast link sends everything, a slow one nothing
    dev, srv = [0.01] * n, [1e-5] * n
    assert plan(prog, [x, mask], 1e9, 0.001, dev, srv).best.where == "cloud"
    assert plan(prog, [x, mask], 10.0, 0.001, dev, srv).best.where == "edge"
    # the early nodes are cheap on the device and the later ones costly; the link is slow, so the
    # small value after `c` (8 wide) beats sending x (24 wide): a split there wins
    dev = [1e-4 if name in ("a", "b", "ln", "res", "c") else 1.0 for name in names]
    srv = [1e-4] * n
    p = plan(prog, [x, mask], 2000.0, 0.002, dev, srv)
    assert p.best.where == "split" and p.best.node == "c", p.table()
    assert p.best.seconds < min(p.option("edge").seconds, p.option("cloud").seconds)
    assert "split after c is best" in p.table()
    with pytest.raises(ValueError):
        plan(prog, [x, mask], 0, 0.0, dev, srv)


def test_the_split_command(tmp_path, capsys, rng=np.random.default_rng(6)):
    from edgecompress.cli import main
    from edgecompress.engine.split_cli import parse_bandwidth, parse_rtt

    assert parse_bandwidth("10Mbit") == 1.25e6 and parse_bandwidth("5MB") == 5e6 and parse_rtt("20ms") == 0.02
    with pytest.raises(ValueError):
        parse_bandwidth("fast")
    prog, _ = _dag_program(rng)
    path = tmp_path / "dag.safetensors"
    prog.save(path)
    assert main(["split", str(path), "--bandwidth", "10Mbit", "--rtt", "20ms", "--dims", "batch=2,seq=16"]) == 0
    out = capsys.readouterr().out
    assert "edge" in out and "cloud" in out and "predicted ms" in out and "measured ms" in out
    assert main(["split", str(path), "--bandwidth", "fast"]) == 1


def test_min_cut_equals_the_best_of_every_closed_split(rng=np.random.default_rng(8)):
    """On a DAG, the minimum cut's cost equals a brute force over every set of nodes that can run on the
    device (closed under producers), with random node times and transfer costs."""
    import itertools

    from edgecompress.engine.split import min_cut

    prog, _ = _dag_program(rng)
    nodes = prog.nodes
    n = len(nodes)
    producer = {o: k for k, nd in enumerate(nodes) for o in nd.outputs}
    inputs = {i.name for i in prog.inputs}
    values = {x for nd in nodes for x in nd.inputs if x and (x in producer or x in inputs)}
    for _ in range(60):
        device = list(rng.uniform(0, 1, n))
        server = list(rng.uniform(0, 1, n))
        transfer = {x: float(rng.uniform(0, 2)) for x in values}
        back = {o: float(rng.uniform(0, 1)) for o in prog.outputs}
        best = float("inf")
        for bits in itertools.product([0, 1], repeat=n):
            on = {k for k in range(n) if bits[k]}
            if any(producer[x] not in on for k in on for x in nodes[k].inputs if x in producer):
                continue  # a node on the device reading a value made on the server
            cost = sum(device[k] for k in on) + sum(server[k] for k in range(n) if k not in on)
            for x in values:
                src_on_device = x in inputs or producer[x] in on
                if src_on_device and any(x in nodes[k].inputs for k in range(n) if k not in on):
                    cost += transfer[x]
            cost += sum(back[o] for o in prog.outputs if producer[o] not in on)
            best = min(best, cost)
        got, on_device = min_cut(prog, device, server, transfer, back)
        assert got == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_plan_offers_the_min_cut_and_it_reproduces_the_program(rng=np.random.default_rng(9)):
    """Two parallel branches with a costly op each: the best split runs one branch on each side, a cut
    no prefix of the node order gives; the plan finds it and split() runs it exactly."""
    from edgecompress.engine import plan

    g = GraphBuilder()
    x = g.input("x", "float32", ("n", 16))
    a = g.linear(x, rng.standard_normal((16, 16)).astype(np.float32), None, "a")
    b = g.linear(x, rng.standard_normal((16, 16)).astype(np.float32), None, "b")
    a2 = g.linear(a, rng.standard_normal((2, 16)).astype(np.float32), None, "a2")  # small: cheap to send
    b2 = g.linear(b, rng.standard_normal((16, 16)).astype(np.float32), None, "b2")
    ab = g.op("concat", [a2, b2], "ab")
    prog = g.program([g.linear(ab, rng.standard_normal((4, 18)).astype(np.float32), None, "out")], {})
    xs = rng.standard_normal((64, 16)).astype(np.float32)
    names = [nd.name for nd in prog.nodes]  # a, b, a2, b2, ab, out
    # a and a2 are cheap on the device; b and b2 are costly there; the server is fast for b's branch
    device = [{"a": 1e-4, "a2": 1e-4}.get(nm, 1.0) for nm in names]
    server = [{"a": 1.0, "a2": 1.0}.get(nm, 1e-4) for nm in names]
    p = plan(prog, [xs], 1e6, 0.001, device, server)
    best = p.best
    assert "min-cut" in best.node and set(best.values) == {"a2"}, p.table()
    head, tail = split(prog, list(best.values), xs)
    np.testing.assert_array_equal(tail(a2=head(x=xs), x=xs), prog(xs))
