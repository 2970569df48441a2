"""The lab model's computation: deterministic, routed top-k, bounded by max_tokens, printable output."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "roles" / "triton_server" / "files" / "lab_model"))

from tiny_moe import MoEConfig, TinyMoE, detokenize  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return TinyMoE()


def test_same_prompt_same_text_across_instances(model):
    again = TinyMoE()
    assert detokenize(model.generate("What is DeepSeek?", 24)) == detokenize(again.generate("What is DeepSeek?", 24))


def test_different_prompts_give_different_text(model):
    assert detokenize(model.generate("alpha", 16)) != detokenize(model.generate("omega", 16))


def test_max_tokens_bounds_the_output_and_zero_gives_nothing(model):
    assert len(detokenize(model.generate("hi", 7))) == 7
    assert model.generate("hi", 0) == []
    with pytest.raises(ValueError, match="max_tokens must be >= 0"):
        model.generate("hi", -1)


def test_output_is_printable_ascii_and_not_one_repeated_byte(model):
    text = detokenize(model.generate("Explain mixture of experts.", 64))
    assert all(32 <= ord(c) < 127 for c in text)
    assert len(set(text)) > 4


def test_router_picks_top_k_distinct_experts_with_gates_summing_to_one(model):
    hidden = model.embedding[65]
    chosen, gates = model.route(hidden)
    assert len(chosen) == len(set(chosen.tolist())) == model.config.top_k
    assert np.isclose(gates.sum(), 1.0)
    logits = hidden @ model.router
    assert set(chosen.tolist()) == set(np.argsort(-logits)[: model.config.top_k].tolist())


def test_routing_spreads_over_several_experts(model):
    used = {e for step in model.generate("The quick brown fox jumps over the lazy dog", 96) for e in step.experts}
    assert len(used) >= 3


def test_seed_changes_the_weights_and_the_text():
    a = detokenize(TinyMoE(MoEConfig(seed=1)).generate("same prompt", 16))
    b = detokenize(TinyMoE(MoEConfig(seed=2)).generate("same prompt", 16))
    assert a != b


def test_bad_top_k_is_refused():
    with pytest.raises(ValueError, match="top_k must be between 1 and experts"):
        TinyMoE(MoEConfig(experts=4, top_k=5))


def test_saved_weights_load_back_to_the_same_model_and_another_seed_differs(tmp_path, model):
    path = tmp_path / "weights.npz"
    model.save(str(path))
    loaded = TinyMoE.load(str(path))
    assert detokenize(loaded.generate("upgrade", 20)) == detokenize(model.generate("upgrade", 20))
    other = tmp_path / "other.npz"
    TinyMoE(MoEConfig(seed=7)).save(str(other))
    assert detokenize(TinyMoE.load(str(other)).generate("upgrade", 20)) != detokenize(model.generate("upgrade", 20))


def test_weights_with_a_wrong_shape_or_a_missing_array_are_refused(tmp_path, model):
    arrays = {name: model.shapes()[name] for name in ("embedding", "recurrent", "router", "w_in")}
    missing = tmp_path / "missing.npz"
    np.savez(missing, **{name: np.zeros(shape, dtype=np.float32) for name, shape in arrays.items()})
    with pytest.raises(ValueError, match="lacks weight"):
        TinyMoE.load(str(missing))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{name: np.zeros(shape, dtype=np.float32) for name, shape in arrays.items()}, w_out=np.zeros(3))
    with pytest.raises(ValueError, match="w_out has shape"):
        TinyMoE.load(str(wrong))
