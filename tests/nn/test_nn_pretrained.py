"""The Hugging Face round trip: compress a transformers model, save_pretrained, edgecompress.from_pretrained."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import edgecompress as ec  # noqa: E402
from edgecompress import nn as enn  # noqa: E402
from edgecompress.serialization import load_state_dict  # noqa: E402


def _swap_linears(model, keep=()):
    """Every nn.Linear of ``model`` as an Int4Linear in the MLPs, an Int8Linear elsewhere (but ``keep``)."""
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and name not in keep:
                cls = enn.Int4Linear if "mlp" in parent_name or "intermediate" in parent_name else enn.Int8Linear
                setattr(parent, name, cls.from_float(child))
    return model


def _llama(tie):
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(config).eval()


def _bert():
    config = transformers.BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=32)
    return transformers.BertModel(config).eval()


@pytest.mark.parametrize("case", ["bert", "llama-tied-float-head", "llama-compressed-head"])
def test_save_pretrained_then_from_pretrained_gives_the_same_outputs(case, tmp_path):
    torch.manual_seed(0)
    if case == "bert":
        model, out = _swap_linears(_bert()), "last_hidden_state"
    else:
        tied = case == "llama-tied-float-head"  # save_pretrained leaves the tied lm_head.weight out
        model, out = _llama(tie=tied), "logits"
        _swap_linears(model, keep=("lm_head",) if tied else ())
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = getattr(model(input_ids=ids), out)
    model.save_pretrained(tmp_path)  # failed on the dict of each compressed module's extra state
    loaded = ec.from_pretrained(type(model), tmp_path)
    assert not loaded.training
    assert [(n, type(m)) for n, m in loaded.named_modules()] == [(n, type(m)) for n, m in model.named_modules()]
    with torch.no_grad():
        assert torch.equal(getattr(loaded(input_ids=ids), out), want)


def test_sharded_checkpoints_load(tmp_path):
    torch.manual_seed(0)
    model = _swap_linears(_bert())
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids = torch.randint(0, 96, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(ec.from_pretrained(transformers.BertModel, tmp_path)(input_ids=ids).last_hidden_state,
                           model(input_ids=ids).last_hidden_state)


def test_load_state_dict_refuses_what_does_not_fit(tmp_path):
    torch.manual_seed(0)
    state = _swap_linears(_bert()).state_dict()
    key = "encoder.layer.0.attention.self.query._extra_state"
    with pytest.raises(ValueError, match="module 'encoder.layer.0.attention.self.query': expected the extra state "
                                         "as UTF-8 JSON text"):
        load_state_dict(_bert(), dict(state, **{key: torch.tensor([0xFF], dtype=torch.uint8)}))
    smaller = dict(state)
    del smaller["encoder.layer.1.output.LayerNorm.weight"]
    with pytest.raises(ValueError, match=r"missing \['encoder.layer.1.output.LayerNorm.weight'\]"):
        load_state_dict(_bert(), smaller)
    with pytest.raises(TypeError, match="model_class: expected a transformers model class"):
        ec.from_pretrained(torch.nn.Linear, tmp_path)
    with pytest.raises(FileNotFoundError, match="path: no directory"):
        ec.from_pretrained(transformers.BertModel, tmp_path / "absent")
