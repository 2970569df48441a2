"""A tiny deterministic mixture-of-experts text generator: the lab's functional stand-in for DeepSeek.

It is NOT a language model. It exists so that the lab serves a model with the same interface as
production and does real work per token, shaped like a MoE layer: word-level tokens, an embedding, a
recurrent context state, a top-k router over expert MLPs, tied output logits, then greedy decoding or
sampling (temperature, top-k, top-p, seed, presence and frequency penalties). The same weights and the
same request always give the same text on every node of every site, which is what the probe, the proxy
tests and the failover tests compare.

The vocabulary is ``tokenizer/tokenizer.json`` next to this file: a Hugging Face tokenizers file (WordLevel
model, Lowercase normalizer, Whitespace pre-tokenizer). It is the one definition of the vocabulary: this
module reads the words from it and splits prompts the way that tokenizer does, and benchmark tools (NVIDIA
AIPerf ``--tokenizer <that directory>``) count the lab's tokens with the same file. Generated tokens are
the vocabulary's words, each written with a leading space (as byte-level BPE tokens such as DeepSeek's
carry theirs), so an answer reads as words and the tokenizer counts one token per generated word.

Weights come from a fixed seed, or from a .npz file, which is how the lab model is served from a model
artifact (``python3 tiny_moe.py --seed N --save weights.npz`` writes one). Their shapes follow the
vocabulary's size: weights written for another vocabulary are refused with the shape that differs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

WEIGHTS = ("embedding", "recurrent", "router", "w_in", "w_out")
TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer", "tokenizer.json")
# The pattern of the tokenizers library's Whitespace pre-tokenizer: runs of word characters, or runs of
# other non-space characters.
WHITESPACE_SPLIT = re.compile(r"\w+|[^\w\s]+")
# Logit of a token the model never generates (special tokens, punctuation): finite, so softmax stays exact.
NEVER = -1e9


class Vocabulary:
    """The words of a tokenizers WordLevel file, and how a prompt is split into them."""

    def __init__(self, path: str = TOKENIZER) -> None:
        """Read ``path`` (tokenizer.json); anything but a lowercasing WordLevel/Whitespace file is refused."""
        with open(path, encoding="utf-8") as source:
            data = json.load(source)
        model = data.get("model") or {}
        if model.get("type") != "WordLevel":
            raise ValueError(f"{path}: the lab model needs a WordLevel tokenizer, not {model.get('type')!r}")
        if (data.get("pre_tokenizer") or {}).get("type") != "Whitespace":
            raise ValueError(f"{path}: the lab model needs the Whitespace pre-tokenizer")
        self.lowercase = (data.get("normalizer") or {}).get("type") == "Lowercase"
        vocab: dict[str, int] = model["vocab"]
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError(f"{path}: token ids must be 0..{len(vocab) - 1}, each once")
        self.path = path
        self.ids = dict(vocab)
        self.words = [""] * len(vocab)
        for word, index in vocab.items():
            self.words[index] = word
        self.unk = vocab[model["unk_token"]]
        special = {token["id"] for token in data.get("added_tokens", []) if token.get("special")}
        # Generated tokens are plain words: never a special token or punctuation.
        self.generable = np.array(
            [index not in special and word.isalpha() for index, word in enumerate(self.words)], dtype=bool
        )

    def __len__(self) -> int:
        """Number of tokens."""
        return len(self.words)

    def split(self, text: str) -> list[str]:
        """The pieces the tokenizer makes of ``text`` (normalizer, then pre-tokenizer)."""
        return WHITESPACE_SPLIT.findall(text.lower() if self.lowercase else text)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as the tokenizer gives them (unknown pieces are the unknown token)."""
        return [self.ids.get(piece, self.unk) for piece in self.split(text)]

    def piece(self, token: int) -> str:
        """The text a generated token adds to an answer: its word with a leading space."""
        return " " + self.words[token]


@dataclass(frozen=True)
class MoEConfig:
    """Shape of the model; the defaults are what the lab serves."""

    seed: int = 20250101
    d_model: int = 64
    d_hidden: int = 128
    experts: int = 8
    top_k: int = 2
    window: int = 16
    # Extra embedding rows for prompt words outside the vocabulary (hashed), so that prompts made of unknown
    # words still steer the answer. They never come out: the output logits cover the vocabulary only.
    oov_buckets: int = 64


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen; the defaults are greedy decoding.

    ``temperature`` unset or 0, or ``top_k`` 1, is greedy. Otherwise the token is drawn from the softmax of
    the logits divided by the temperature, limited to the ``top_k`` most likely tokens (0: no limit) and to
    the smallest set whose probability reaches ``top_p`` (0 or 1: no limit), with a generator seeded by
    ``seed`` (0 when unset), so the same request gives the same text. The penalties lower the logits of
    tokens already generated: ``presence_penalty`` once, ``frequency_penalty`` per occurrence.
    """

    temperature: float | None = None
    top_k: int = 0
    top_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        """Whether the most likely token is always taken."""
        return not self.temperature or self.top_k == 1


@dataclass
class Step:
    """One generated token, its text, the experts the router chose for it and its log-probability."""

    token: int
    piece: str
    experts: tuple[int, ...]
    logprob: float


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities of ``logits`` (float64)."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return shifted - np.log(np.sum(np.exp(shifted)))


class TinyMoE:
    """Weights and the forward step of the stand-in model."""

    def __init__(self, config: MoEConfig | None = None, vocabulary: Vocabulary | None = None) -> None:
        """Draw every weight from the configured seed; the vocabulary defaults to tokenizer/tokenizer.json."""
        self.config = config or MoEConfig()
        self.vocabulary = vocabulary or Vocabulary()
        cfg = self.config
        if not 1 <= cfg.top_k <= cfg.experts:
            raise ValueError(f"top_k must be between 1 and experts ({cfg.experts}), got {cfg.top_k}")
        rng = np.random.default_rng(cfg.seed)
        scale = 1.0 / np.sqrt(cfg.d_model)
        rows = len(self.vocabulary) + cfg.oov_buckets
        self.embedding = rng.normal(0.0, 1.0, (rows, cfg.d_model)).astype(np.float32)
        self.recurrent = rng.normal(0.0, 1.2 * scale, (cfg.d_model, cfg.d_model)).astype(np.float32)
        self.router = (rng.normal(0.0, scale, (cfg.d_model, cfg.experts))).astype(np.float32)
        self.w_in = rng.normal(0.0, scale, (cfg.experts, cfg.d_model, cfg.d_hidden)).astype(np.float32)
        self.w_out = rng.normal(0.0, 1.0 / np.sqrt(cfg.d_hidden), (cfg.experts, cfg.d_hidden, cfg.d_model)).astype(
            np.float32
        )

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every weight array for this configuration and vocabulary."""
        return {name: getattr(self, name).shape for name in WEIGHTS}

    def save(self, path: str) -> None:
        """Write the weights to ``path`` (numpy .npz, no pickled objects)."""
        with open(path, "wb") as out:
            np.savez(out, **{name: getattr(self, name) for name in WEIGHTS})

    @classmethod
    def load(cls, path: str, config: MoEConfig | None = None, vocabulary: Vocabulary | None = None) -> TinyMoE:
        """A model with the weights of ``path``; a missing array or a wrong shape raises ValueError."""
        model = cls(config, vocabulary)
        with np.load(path, allow_pickle=False) as saved:
            missing = sorted(set(WEIGHTS) - set(saved.files))
            if missing:
                raise ValueError(f"{path} lacks weight(s) {', '.join(missing)}")
            for name, shape in model.shapes().items():
                if saved[name].shape != shape:
                    raise ValueError(f"{path}: {name} has shape {saved[name].shape}, expected {shape}")
                setattr(model, name, saved[name].astype(np.float32))
        return model

    def context(self, prompt: str) -> list[int]:
        """Embedding rows of the prompt's pieces: the token id, or a hashed extra row for an unknown word."""
        size, buckets = len(self.vocabulary), self.config.oov_buckets
        return [
            self.vocabulary.ids.get(piece, size + zlib.crc32(piece.encode("utf-8")) % buckets)
            for piece in self.vocabulary.split(prompt)
        ]

    def route(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k experts for a hidden state and their renormalised softmax gates."""
        logits = hidden @ self.router
        chosen = np.argsort(-logits, kind="stable")[: self.config.top_k]
        gates = np.exp(logits[chosen] - logits[chosen].max())
        return chosen, (gates / gates.sum()).astype(np.float32)

    def logits(self, context: list[int]) -> tuple[np.ndarray, tuple[int, ...]]:
        """Next-token logits over the vocabulary after ``context``, and the experts that produced them."""
        hidden = np.zeros(self.config.d_model, dtype=np.float32)
        for row in context[-self.config.window :] or [self.vocabulary.unk]:
            hidden = np.tanh(hidden @ self.recurrent + self.embedding[row])
        chosen, gates = self.route(hidden)
        mixed = np.zeros_like(hidden)
        for expert, gate in zip(chosen, gates, strict=True):
            activation = np.maximum(hidden @ self.w_in[expert], 0.0)
            mixed += gate * (activation @ self.w_out[expert])
        hidden = hidden + mixed
        size = len(self.vocabulary)
        logits = (self.embedding[:size] @ hidden).astype(np.float64)
        logits[~self.vocabulary.generable] = NEVER
        # A word just used is damped so that the output does not collapse into one repeated word.
        recent = sorted({row for row in context[-8:] if row < size})
        logits[recent] -= 1e3
        return logits, tuple(int(e) for e in chosen)

    def step(self, context: list[int], sampling: Sampling, rng: np.random.Generator, counts: dict[int, int]) -> Step:
        """The next token after ``context``, chosen as ``sampling`` says (``counts``: tokens generated so far)."""
        logits, experts = self.logits(context)
        for token, count in counts.items():
            logits[token] -= sampling.presence_penalty + sampling.frequency_penalty * count
        if sampling.greedy:
            logprobs = log_softmax(logits)
            token = int(np.argmax(logits))
        else:
            scaled = logits / float(sampling.temperature or 1.0)
            if 0 < sampling.top_k < scaled.size:
                cutoff = np.sort(scaled)[-sampling.top_k]
                scaled[scaled < cutoff] = NEVER
            logprobs = log_softmax(scaled)
            if 0 < sampling.top_p < 1:
                order = np.argsort(-logprobs, kind="stable")
                cumulative = np.cumsum(np.exp(logprobs[order]))
                keep = order[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]
                kept = np.full_like(scaled, NEVER)
                kept[keep] = scaled[keep]
                logprobs = log_softmax(kept)
            probabilities = np.exp(logprobs)
            token = int(rng.choice(probabilities.size, p=probabilities / probabilities.sum()))
        return Step(token, self.vocabulary.piece(token), experts, float(logprobs[token]))

    def stream(self, prompt: str, max_tokens: int, sampling: Sampling | None = None) -> Iterator[Step]:
        """Up to ``max_tokens`` steps after ``prompt``, one at a time (the caller may stop between tokens)."""
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        sampling = sampling or Sampling()
        rng = np.random.default_rng(sampling.seed or 0)
        context = self.context(prompt)
        counts: dict[int, int] = {}
        for _position in range(max_tokens):
            step = self.step(context, sampling, rng, counts)
            context.append(step.token)
            counts[step.token] = counts.get(step.token, 0) + 1
            yield step

    def generate(self, prompt: str, max_tokens: int, sampling: Sampling | None = None) -> list[Step]:
        """``max_tokens`` steps after ``prompt``."""
        return list(self.stream(prompt, max_tokens, sampling))

    def answer(self, prompt: str, max_tokens: int, sampling: Sampling | None = None) -> str:
        """The served model's ``text_output`` for this request, not streamed: the prompt, then the generated text."""
        return prompt + detokenize(self.generate(prompt, max_tokens, sampling))


def detokenize(steps: list[Step]) -> str:
    """The text of generated steps: their words, each with a leading space."""
    return "".join(step.piece for step in steps)


def main() -> None:
    """Command line: write the weights drawn from a seed to a .npz file (a lab model artifact)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=MoEConfig.seed)
    parser.add_argument("--tokenizer", default=TOKENIZER, help="tokenizer.json whose vocabulary sizes the weights")
    parser.add_argument("--save", required=True, help="output .npz file")
    args = parser.parse_args()
    TinyMoE(MoEConfig(seed=args.seed), Vocabulary(args.tokenizer)).save(args.save)


if __name__ == "__main__":
    main()
