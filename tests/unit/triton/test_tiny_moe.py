"""The lab model's computation: deterministic, routed top-k, bounded by max_tokens, words of its vocabulary."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from deepseek_testkit import load_module

LAB = Path(__file__).resolve().parents[3] / "roles" / "triton_server" / "files" / "lab_model"
tiny_moe = load_module(LAB / "tiny_moe.py")  # shipped to the hosts with model.py, not a package
MoEConfig, Sampling, TinyMoE, Vocabulary = tiny_moe.MoEConfig, tiny_moe.Sampling, tiny_moe.TinyMoE, tiny_moe.Vocabulary
detokenize = tiny_moe.detokenize

TOKENIZER = LAB / "tokenizer" / "tokenizer.json"


@pytest.fixture(scope="module")
def model():
    return TinyMoE()


def words(text):
    return text.split()


def test_same_prompt_same_text_across_instances(model):
    again = TinyMoE()
    assert detokenize(model.generate("What is DeepSeek?", 24)) == detokenize(again.generate("What is DeepSeek?", 24))


def test_different_prompts_give_different_text_also_of_unknown_words(model):
    assert detokenize(model.generate("alpha", 16)) != detokenize(model.generate("omega", 16))
    assert detokenize(model.generate("the standby site", 16)) != detokenize(model.generate("the primary site", 16))


def test_max_tokens_bounds_the_output_and_zero_gives_nothing(model):
    assert len(words(detokenize(model.generate("hi", 7)))) == 7
    assert model.generate("hi", 0) == []
    with pytest.raises(ValueError, match="max_tokens must be >= 0"):
        model.generate("hi", -1)


def test_the_answer_is_the_prompt_then_the_generated_words(model):
    steps = model.generate("What is a mixture of experts?", 9)
    assert model.answer("What is a mixture of experts?", 9) == "What is a mixture of experts?" + detokenize(steps)
    assert all(step.piece == " " + model.vocabulary.words[step.token] for step in steps)


def test_output_is_words_of_the_vocabulary_and_not_one_repeated_word(model):
    text = detokenize(model.generate("Explain mixture of experts.", 64))
    assert text.startswith(" ")
    vocabulary = set(model.vocabulary.words)
    assert all(word in vocabulary and word.isalpha() for word in words(text))
    assert len(set(words(text))) > 16


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


def test_weights_follow_the_vocabulary_and_another_vocabularys_weights_are_refused(tmp_path, model):
    assert model.shapes()["embedding"] == (len(model.vocabulary) + MoEConfig.oov_buckets, MoEConfig.d_model)
    data = json.loads(TOKENIZER.read_text())
    data["model"]["vocab"]["zebra"] = len(data["model"]["vocab"])
    bigger = tmp_path / "tokenizer.json"
    bigger.write_text(json.dumps(data))
    path = tmp_path / "weights.npz"
    model.save(str(path))
    with pytest.raises(ValueError, match="embedding has shape"):
        TinyMoE.load(str(path), vocabulary=Vocabulary(str(bigger)))


def test_the_command_line_writes_an_artifact_the_model_loads(tmp_path, monkeypatch, model):
    path = tmp_path / "weights.npz"
    monkeypatch.setattr(sys, "argv", ["tiny_moe.py", "--seed", str(MoEConfig.seed), "--save", str(path)])
    tiny_moe.main()
    assert TinyMoE.load(str(path)).answer("artifact", 8) == model.answer("artifact", 8)


# ---------------------------------------------------------------------------------------------------------
# Sampling


def test_temperature_zero_and_top_k_one_are_greedy(model):
    greedy = model.answer("sampling", 16)
    assert model.answer("sampling", 16, Sampling(temperature=0.0)) == greedy
    assert model.answer("sampling", 16, Sampling(temperature=1.3, top_k=1)) == greedy


def test_the_same_seed_gives_the_same_sample_and_unset_is_seed_zero(model):
    hot = Sampling(temperature=1.5, seed=42)
    assert model.answer("sampling", 24, hot) == model.answer("sampling", 24, hot)
    assert model.answer("sampling", 24, hot) != model.answer("sampling", 24, Sampling(temperature=1.5, seed=43))
    assert model.answer("sampling", 24, Sampling(temperature=1.5)) == model.answer(
        "sampling", 24, Sampling(temperature=1.5, seed=0)
    )


def test_top_k_and_top_p_keep_the_most_likely_tokens(model):
    context = model.context("sampling")
    logits, _experts = model.logits(context)
    best = set(np.argsort(-logits)[:3].tolist())
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert model.step(context, Sampling(temperature=5.0, top_k=3), rng, {}).token in best
        step = model.step(context, Sampling(temperature=1.0, top_p=1e-6), rng, {})
        assert step.token == int(np.argmax(logits))
        assert step.logprob == pytest.approx(0.0)


def test_penalties_lower_the_tokens_already_generated(model):
    context = model.context("penalties")
    logits, _experts = model.logits(context)
    top = int(np.argmax(logits))
    rng = np.random.default_rng(0)
    assert model.step(context, Sampling(), rng, {}).token == top
    assert model.step(context, Sampling(presence_penalty=1e4), rng, {top: 1}).token != top
    assert model.step(context, Sampling(frequency_penalty=1e4), rng, {top: 2}).token != top


def test_logprobs_are_log_probabilities(model):
    steps = model.generate("logprobs", 8)
    assert all(step.logprob <= 0.0 for step in steps)
    context = model.context("logprobs")
    logits, _experts = model.logits(context)
    shifted = logits - logits.max()
    assert steps[0].logprob == pytest.approx(float(shifted[steps[0].token] - np.log(np.exp(shifted).sum())))


# ---------------------------------------------------------------------------------------------------------
# The vocabulary: tokenizer/tokenizer.json, one file for the model and for token counting tools


def test_the_vocabulary_is_a_tokenizers_wordlevel_file_with_a_config():
    data = json.loads(TOKENIZER.read_text())
    assert data["model"]["type"] == "WordLevel"
    assert data["pre_tokenizer"] == {"type": "Whitespace"}
    assert data["normalizer"] == {"type": "Lowercase"}
    vocab = data["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert 300 <= len(vocab) <= 1000
    config = json.loads((TOKENIZER.parent / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    unknown = {data["model"]["unk_token"], data["added_tokens"][0]["content"], config["unk_token"]}
    assert unknown == {"[UNK]"}


def test_prompts_split_as_the_tokenizers_library_splits_them():
    # Recorded from tokenizers 0.23.3 (Tokenizer.from_file on this file): encode(...).tokens and .ids.
    vocabulary = Vocabulary(str(TOKENIZER))
    text = "What does the standby site do? Don't panic, alpha!"
    assert vocabulary.split(text) == ["what", "does", "the", "standby", "site", "do", "?", "don", "'", "t", "panic"] + [
        ",",
        "alpha",
        "!",
    ]
    assert vocabulary.encode(text) == [38, 136, 13, 319, 311, 51, 3, 0, 7, 0, 0, 2, 0, 4]


def test_generated_tokens_are_words_never_punctuation_or_unknown():
    vocabulary = Vocabulary(str(TOKENIZER))
    generable = [word for word, ok in zip(vocabulary.words, vocabulary.generable, strict=True) if ok]
    assert "[UNK]" not in generable
    assert "?" not in generable
    assert all(word.isalpha() for word in generable)
    assert len(generable) == len(vocabulary) - 12  # [UNK] and 11 punctuation marks


def test_a_tokenizer_of_another_kind_is_refused(tmp_path):
    data = json.loads(TOKENIZER.read_text())
    data["model"]["type"] = "BPE"
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="needs a WordLevel tokenizer"):
        Vocabulary(str(path))
