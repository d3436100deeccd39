"""The issue's fidelity targets for the "int8" recipe on trained models: relative output error <= 1%
and accuracy within 0.5 points of fp32, on the digits CNN and on a small transformer trained here on a
counting task."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import edgecompress as ec  # noqa: E402
from edgecompress.compress import digits  # noqa: E402


def _rel(a, b):
    return float((a - b).norm() / b.norm())


class _Block(nn.Module):
    """Pre-norm self-attention (explicit q/k/v/o projections) and a GELU feed-forward."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        split = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(self.q(h)) @ split(self.k(h)).transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
        x = x + self.o((att @ split(self.v(h))).transpose(1, 2).reshape(b, t, d))
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.norm2(x))))


class _TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 12, d: int = 64, length: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.1)
        self.blocks = nn.Sequential(_Block(d, 4, 128), _Block(d, 4, 128))
        self.head = nn.Linear(d, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(ids) + self.pos).mean(dim=1))


def _counting_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of 16 tokens; the label says whether token 1 occurs more often than token 2."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 12, (n, 16), generator=g)
    return ids, ((ids == 1).sum(1) > (ids == 2).sum(1)).long()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


def _int8_fidelity(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, calib: torch.Tensor) -> tuple[float, float, float]:
    import copy

    q = copy.deepcopy(model)
    report = ec.compress(q, "int8", example_inputs=(calib,), guard=False, progress=False)
    assert all(r["format"] not in (None, "dense") for r in report.to_dict()["layers"])
    with torch.no_grad():
        rel = _rel(q(x_test), model(x_test))
    return rel, _accuracy(model, x_test, y_test), _accuracy(q, x_test, y_test)


def test_int8_on_the_trained_digits_cnn():
    data = digits.load()
    torch.manual_seed(0)
    model = digits.fit(digits.DigitsCNN(), data, epochs=15)
    rel, acc, acc8 = _int8_fidelity(model, data.x_test, data.y_test, data.x_train[:64])
    assert acc > 97  # a really trained model
    assert rel <= 0.01, f"relative output error {rel:.4f}"
    assert abs(acc - acc8) <= 0.5, f"accuracy {acc:.2f} -> {acc8:.2f}"


def test_int8_on_a_trained_small_transformer():
    torch.manual_seed(0)
    x, y = _counting_task(3000, 0)
    x_test, y_test = _counting_task(1000, 1)
    model = _TinyTransformer()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(12):
        for i in range(0, len(y), 100):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 100]), y[i:i + 100]).backward()
            opt.step()
    model.eval()
    rel, acc, acc8 = _int8_fidelity(model, x_test, y_test, x[:64])
    assert acc > 85  # it learned the task
    assert rel <= 0.01, f"relative output error {rel:.4f}"
    assert abs(acc - acc8) <= 0.5, f"accuracy {acc:.2f} -> {acc8:.2f}"
