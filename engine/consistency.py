"""What the derivation asks the model, computed on the torch twin or in a llama.cpp context of
its own, so that it never touches the chat's: which answer it prefers reading a statement
(the consistency half of the check every pair passes, ``engine.derive.check``), what kind of
thing an answer is (for "Which city …" questions), which words it places near a word (what a
taught question is contrasted with, ``engine.derive.contrast``), and, from an
instruction-tuned model, the pairs it writes itself (``engine.derive.written``)."""

from __future__ import annotations

import difflib
import math
import os

import torch

from engine import text
from engine.derive import LikelyKinds, Prefers, Write
from engine.derive.contrast import Neighbours
from engine.prompt import Turn
from engine.runtime import Runtime
from engine.scoring import Scorer
from engine.twin import Twin
from store import paths

ACK = "Noted."  # the assistant's turn between the statement and the question
BATCH = 16
KIND_CONFIDENCE = 0.75  # a kind's share among the kind words, below which an answer gets none
KIND_ODDS = 10.0  # how many times less likely than an answer's likeliest kind a word must be
# for the model not to take it for a kind of the answer
SHORTEST_WORD = 3  # letters: shorter vocabulary pieces are mostly fragments, not words
STEM = 4  # letters two forms of one word share at the start
SPELLED_ALIKE = 0.75  # difflib ratio from which two words are spellings of one
WRITE_TOKENS = 160  # the model's reply with its questions: five short pairs fit


def twin_prefers(twin: Twin, runtime: Runtime, system: str | None) -> Prefers:
    """``prefers`` for the check: the candidate answers the twin prefers where it starts
    answering with the statement in context — the one it ranks highest (by its first token),
    and the one the statement raises most over the question alone. Either is the model's
    reading: the first misses a rare word against a common one ("What do I drive?" → " 6"
    over " forklift" in "I drive a forklift, been doing it 6 years"), the second a common
    answer against a name the context makes copyable ("How old is Lina?" → " Lina")."""

    @torch.no_grad()
    def prefers(items: list[tuple[str, str, list[str]]]) -> list[set[int]]:
        read = _first_token_logprobs(twin, [runtime.answering(system, [
            Turn("user", statement), Turn("assistant", ACK), Turn("user", question)])
            for statement, question, _ in items])
        blind = _first_token_logprobs(twin, [runtime.answering(system, [Turn("user", question)])
                                             for _, question, _ in items])
        out = []
        for (_, _, answers), with_it, without in zip(items, read, blind, strict=True):
            firsts = [runtime.tokenize(f" {answer}", add_bos=False)[0] for answer in answers]
            raised = with_it[firsts] - without[firsts]
            out.append({int(with_it[firsts].argmax()), int(raised.argmax())})
        return out

    return prefers


def llama_writes(runtime: Runtime, scorer: Scorer) -> Write:
    """``write`` for the pairs the model writes itself: its greedy reply, in ``scorer``'s
    llama.cpp context (the gate's, on the base weights: what earlier sessions taught must
    not shape what is derived now). The prompt ends where the answer begins, after the empty
    thinking block Qwen 3's template writes there, so the tokens go to the pairs: not inside
    a block a generation prompt opens (Qwen 3 Thinking's, DeepSeek-R1's), so the reply is read
    from its start. An instruction that leaves no room for them in that context gets no
    reply."""

    def write(instruction: str) -> str:
        tokens = runtime.answering(None, [Turn("user", instruction)])
        if len(tokens) + WRITE_TOKENS > scorer.llm.n_ctx():
            return ""
        return scorer.greedy(tokens, WRITE_TOKENS, runtime.format.stop)[0]

    return write


def _first_token_logprobs(twin: Twin, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Each prompt's next-token log-probabilities (batched on the twin)."""
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start:start + BATCH]
        batch = twin.batch(chunk)
        h = twin.run(twin.embed(batch), batch)
        last = h[torch.arange(len(chunk)), torch.tensor([len(p) - 1 for p in chunk])]
        out += list(torch.log_softmax(twin.logits(last), -1))
    return out


class TwinKinds:
    """The model's kinds of answers among common kind words
    (``assets/grammar/kind_words.txt``), scored at the first token after the few-shot
    ``kinds.txt`` ("Leeds: city") and read once per answer: the derivation's sure kinds and
    the kind phrasings' likely ones come from one reading. Left to write freely, the 270M
    model named a similar *thing* as often as a kind (bandoneon → "guitar")."""

    def __init__(self, twin: Twin, runtime: Runtime) -> None:
        self.twin, self.runtime = twin, runtime
        self.template = paths.asset("grammar", "kinds.txt").read_text(
            encoding="utf-8").rstrip("\n")
        self.words = paths.asset("grammar", "kind_words.txt").read_text(encoding="utf-8").split()
        self.firsts = torch.tensor([_pieces(runtime, word)[0] for word in self.words])
        self.read: dict[str, torch.Tensor] = {}  # answer → the next token's log-probabilities

    def sure(self, answers: list[str]) -> list[str | None]:
        """``kind_of`` for the derivation: each answer's likeliest kind, or none when the
        model is unsure (Drammen → "film" 0.63, a forklift → "car" 0.29) or names the answer
        itself ("peanuts: peanuts")."""
        out: list[str | None] = []
        for share, answer in zip(self.shares(answers), answers, strict=True):
            best, kind = float(share.max()), self.words[int(share.argmax())]
            sure = best >= KIND_CONFIDENCE and not _names_itself(kind, answer)
            out.append(kind if sure else None)
        return out

    def likely(self, count: int) -> LikelyKinds:
        """``likely`` for ``derive.asked_by_kind``: each answer's ``count`` likeliest kinds,
        sure or not ("Leeds" → city, town), that ``fits`` would keep: the kinds a user may
        name asking about it (not "song" for a cello: "What music do I listen to?" → cello). Read
        without the user's sentence, they can miss ("Elixir", which the user writes, →
        drink, medicine); reading it made them no better."""

        def likely(answers: list[str]) -> list[list[str]]:
            return [[self.words[i] for i in share.topk(count).indices.tolist()
                     if not _names_itself(self.words[i], answer) and fitting[i]]
                    for share, answer, fitting in zip(
                        self.shares(answers), answers, map(self._fitting, self._read(answers)),
                        strict=True)]

        return likely

    def fits(self, answer: str, words: list[str]) -> list[bool]:
        """``fits`` for the kind contrasts: whether the model takes each word, a kind word or
        not, for a kind of ``answer`` — no less than a ``KIND_ODDS``-th as likely as its
        likeliest kind word (the bassoon: "music" fits beside "instrument"; "tool" does not)."""
        firsts = torch.tensor([_pieces(self.runtime, word)[0] for word in words])
        return self._fitting(self._read([answer])[0], firsts).tolist()

    def _fitting(self, logprobs: torch.Tensor, firsts: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Which of the tokens ``firsts`` (the kind words') are no less than a
        ``KIND_ODDS``-th as likely as the likeliest kind word, by ``logprobs``."""
        kinds = logprobs[self.firsts.to(logprobs.device)]
        chosen = kinds if firsts is None else logprobs[firsts.to(logprobs.device)]
        return chosen >= kinds.max() - math.log(KIND_ODDS)

    def shares(self, answers: list[str]) -> list[torch.Tensor]:
        """Each answer's share of every kind word as its kind."""
        return [logprobs[self.firsts.to(logprobs.device)].softmax(-1)
                for logprobs in self._read(answers)]

    @torch.no_grad()
    def _read(self, answers: list[str]) -> list[torch.Tensor]:
        """Each answer's next-token log-probabilities after the few-shot, read once."""
        new = list(dict.fromkeys(a for a in answers if a not in self.read))
        read = _first_token_logprobs(self.twin, [self.runtime.tokenize(
            f"{self.template}\n{answer}:") for answer in new]) if new else []
        self.read.update(zip(new, read, strict=True))
        return [self.read[answer] for answer in answers]


def _pieces(runtime: Runtime, word: str) -> list[int]:
    """The tokens of " word" that write something: some tokenizers give the leading space
    a piece of its own, which every word would share."""
    return [t for t in runtime.tokenize(f" {word}", add_bos=False)
            if runtime.detokenize([t]).strip()]


def _names_itself(kind: str, answer: str) -> bool:
    """"peanuts: peanuts": a kind that is the answer's own word."""
    return kind.rstrip("s") == answer.lower().rstrip("s")


def twin_neighbours(twin: Twin, runtime: Runtime, count: int) -> Neighbours:
    """``neighbours`` for the contrasts: the ``count`` lower-case words of the vocabulary
    whose input embeddings are nearest a word's (cosine; a word of several pieces is their
    mean), one per lemma, other forms and spellings of the word excepted. The model's own
    sense of what is alike: "cat" → dog, pet, horse; "thesis" → dissertation, essay."""
    words, table = _word_table(twin, runtime)

    @torch.no_grad()
    def neighbours(word: str) -> list[str]:
        pieces = _pieces(runtime, word.lower())
        rows = twin.model.model.embed_tokens.weight[pieces].float()
        near = table @ torch.nn.functional.normalize(rows, dim=-1).mean(0)
        own, out = text.lemma(word, "NOUN"), dict[str, str]()
        for i in near.topk(min(len(words), 8 * count)).indices.tolist():
            other = words[i]
            base = text.lemma(other, "NOUN")
            if not _forms_of_one_word(own, base):
                out.setdefault(base, other)
            if len(out) == count:
                break
        return list(out.values())

    return neighbours


def _word_table(twin: Twin, runtime: Runtime) -> tuple[list[str], torch.Tensor]:
    """The vocabulary's whole lower-case words and their normalised input embeddings."""
    ids, words = _vocabulary_words(runtime, twin.model.model.embed_tokens.weight.shape[0])
    return words, torch.nn.functional.normalize(
        twin.model.model.embed_tokens.weight[ids].float(), dim=-1)


_words: dict[str, tuple[list[int], list[str]]] = {}


def _vocabulary_words(runtime: Runtime, size: int) -> tuple[list[int], list[str]]:
    """The ids and text of the vocabulary's whole lower-case words (a leading space, letters
    only): read once per model and process (decoding all its tokens took a second a job)."""
    if runtime.model.sha256 not in _words:
        pieces = {i: runtime.detokenize([i]) for i in range(size)}
        ids = [i for i, piece in pieces.items() if _is_word(piece)]
        _words[runtime.model.sha256] = ids, [pieces[i][1:] for i in ids]
    return _words[runtime.model.sha256]


def _forms_of_one_word(a: str, b: str) -> bool:
    """Forms or spellings of one word ("course"/"courses", "colour"/"color", "name"/"nome"):
    the same thing to a user, so never a contrast. One stem (a shared start of four letters,
    or all of the shorter) or a near-identical spelling (difflib's ratio)."""
    stem = len(os.path.commonprefix([a, b]))
    return (stem >= min(STEM, len(a), len(b))
            or difflib.SequenceMatcher(None, a, b).ratio() >= SPELLED_ALIKE)


def _is_word(piece: str) -> bool:
    word = piece[1:]
    return (piece[:1] == " " and len(word) >= SHORTEST_WORD and word.isascii()
            and word.isalpha() and word.islower())
