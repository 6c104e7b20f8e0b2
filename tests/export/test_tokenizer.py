"""tokenizer.json files give the same input_ids as the transformers tokenizers they come from.

BERTweet's real vocab.txt and bpe.codes cannot be downloaded here, so a small fastBPE-style model is
learned from the sentences below: merges by pair frequency, then the vocab from applying them (rare pieces
left out, as a frequency cut-off does), which leaves merge symbols the vocab lacks, as the real one does.
"""

import json
import random
import re
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, pre_tokenizers
from tokenizers.models import BPE
from transformers import AutoTokenizer, BertTokenizer, BertweetTokenizer, PhobertTokenizer

from service.export.tokenizer import PYTHON_WHITESPACE, _merges_as_strings, save_tokenizer_json

ROOT = Path(__file__).resolve().parents[2]
SHARED_MODELS = ROOT / ".." / "shared" / "models"
TWEETS = ROOT / "tests" / "sentiment" / "data" / "tricky_tweets.txt"
MAX_LENGTH = 128

SENTENCES = """\
@USER I love this song so much , it makes my day HTTPURL
@USER @USER thanks for the follow ! have a great weekend :smiling_face:
the new phone is amazing but the battery life is terrible
I can't believe they lost again tonight . worst game ever
going to the beach this weekend with my friends :sun: :beach_with_umbrella:
happy birthday to my best friend ! love you so much :red_heart: :red_heart:
this traffic is killing me , late for work again :angry_face:
just finished watching the movie , what an ending !
who else is watching the debate tonight ? HTTPURL
the weather today is beautiful , perfect for a long walk
my dog ate my homework , literally :face_with_tears_of_joy:
new blog post about machine learning and tweets HTTPURL
so tired of waiting for the bus every single morning
coffee first , then we talk :hot_beverage:
watching the game with the family , lets go team !
this is the best pizza I have ever had in my life
I hate mondays so much , why is it monday again
breaking news : market falls after the announcement HTTPURL
the concert last night was incredible , thank you @USER
cannot wait for the holidays , only two weeks left
hahaha that video is hilarious , watched it ten times
so proud of my sister , she graduated today !
the customer service was awful , never buying again
reading a great book about history and politics
good morning everyone , have a wonderful day !
feeling sick today , staying in bed with tea
the election results are coming in tonight HTTPURL
loving the new album , every song is a masterpiece
why does my phone always die at the worst moment
finally friday ! time to relax and enjoy the weekend
la vida es bella cuando estás con tu familia
qué lindo día para salir a caminar por el parque
el partido de hoy fue increíble , ganamos otra vez
café y música , el mejor comienzo del día
""".splitlines()

NOVEL = [
    "unbelievable",
    "thanksgiving",
    "xylophone",
    "zzz",
    "qwerty",
    "Phone",
    "PHONE",
    "weekends",
    "lovelovelove",
    "hahahahaha",
    "running",
    "rerunning",
    "the",
    "a",
    "I",
    "!",
    "?!",
    ":)",
    "<3",
    "https://t.co/xyz",
    "#hashtag",
    "@someone",
    "12345",
    "3.14",
    "naïve",
    "café",
    "jalapeño",
    "straße",
    "Ω",
    "日本語",
    "😀",
    "🇦🇷",
    "👍🏽",
    "مرحبا",
    "привет",
    "नमस्ते",
    "a@@",
    "@@",
    "x@@y",
    "ends@@",
    "</w>",
    "o</w>",
    "<unk>",
    "<mask>",
    "<s>",
    "</s>",
    "<pad>",
    "<maskx",
    "tab\tin",
    "new\nline",
    "trail\n",
    "\n\nlead",
    "nb\u00a0sp",
    "fs\x1csep",
    "em\u2003sp",
    "zw\u200bsp",
    "ideo\u3000sp",
    "nel\u0085x",
    "ls\u2028x",
    "mongol\u180ex",
    "thethethethethethethethethe",
]


def learn_fastbpe(sentences: list[str], merges: int, min_count: int) -> tuple[list[str], list[str]]:
    """bpe.codes and vocab.txt lines, learned like fastBPE's learnbpe + getvocab (deterministically)."""
    words = Counter(word for sentence in sentences for word in sentence.split())
    symbols = {word: (*word[:-1], word[-1] + "</w>") for word in words}
    codes = []
    for _ in range(merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, parts in symbols.items():
            for pair in pairwise(parts):
                pairs[pair] += words[word]
        if not pairs:
            break
        (first, second), count = max(pairs.items(), key=lambda item: (item[1], item[0]))
        codes.append(f"{first} {second} {count}")
        for word, parts in symbols.items():
            merged, i = [], 0
            while i < len(parts):
                if parts[i : i + 2] == (first, second):
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            symbols[word] = tuple(merged)
    pieces: Counter[str] = Counter()
    for word, parts in symbols.items():
        for part in [part + "@@" for part in parts[:-1]] + [parts[-1].removesuffix("</w>")]:
            pieces[part] += words[word]
    vocab = [f"{piece} {count}" for piece, count in pieces.most_common() if count >= min_count]
    return codes, vocab


def texts_for_bertweet() -> list[str]:
    """Corpus sentences, their words in new orders and cases, unseen words and characters, edge cases."""
    rng = random.Random(7)
    words = [word for sentence in SENTENCES for word in sentence.split()] + NOVEL
    texts = ["", " ", "\n", "hello", *SENTENCES, *NOVEL]
    separators = [" ", " ", " ", "  ", "\n", " \n ", "\t", "<mask>", " <mask> ", "\u00a0", "\x1c"]
    while len(texts) < 400:
        text = rng.choice(words)
        for _ in range(rng.randint(1, 60)):
            word = rng.choice(words)
            text += rng.choice(separators) + rng.choice([word, word, word.upper(), word.title(), word * 2])
        texts.append(text)
    return texts


@pytest.fixture(scope="module")
def bertweet(tmp_path_factory: pytest.TempPathFactory) -> BertweetTokenizer:
    folder = tmp_path_factory.mktemp("bertweet")
    codes, vocab = learn_fastbpe(SENTENCES, merges=300, min_count=2)
    (folder / "bpe.codes").write_text("\n".join(codes) + "\n", encoding="utf-8")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertweetTokenizer(str(folder / "vocab.txt"), str(folder / "bpe.codes"))


def test_bertweet_ids_match_the_slow_tokenizer(bertweet: BertweetTokenizer, tmp_path: Path) -> None:
    fast = Tokenizer.from_file(str(save_tokenizer_json(bertweet, tmp_path, max_length=MAX_LENGTH)))
    vocab_size, unk = len(bertweet), bertweet.unk_token_id
    mismatches, beyond_vocab = [], 0
    for text in texts_for_bertweet():
        expected = bertweet(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        raw = fast.encode(text).ids
        # Merge symbols missing from fastBPE's vocab come out past the vocab, only where the slow gives <unk>.
        got = [unk if index >= vocab_size else index for index in raw]
        beyond_vocab += got != raw
        if got != expected:
            mismatches.append(
                f"{text!r}\n  slow: {bertweet.tokenize(text)}\n  fast: {fast.encode(text).tokens}"
            )
    assert not mismatches, f"{len(mismatches)} texts differ; first ones:\n" + "\n".join(mismatches[:5])
    assert beyond_vocab, "no text reached a merge symbol missing from the vocab: the test lost its edge"


def test_bertweet_keeps_ids_of_vocab_pieces_and_special_tokens(
    bertweet: BertweetTokenizer, tmp_path: Path
) -> None:
    fast = Tokenizer.from_file(str(save_tokenizer_json(bertweet, tmp_path, max_length=MAX_LENGTH)))
    assert fast.encode("").ids == [bertweet.cls_token_id, bertweet.sep_token_id]
    assert fast.encode("<mask>").ids == bertweet("<mask>")["input_ids"]
    assert fast.token_to_id("<mask>") == bertweet.mask_token_id == len(bertweet) - 1
    assert fast.padding is None
    assert fast.truncation["max_length"] == MAX_LENGTH


def test_bertweet_word_split_uses_python_whitespace() -> None:
    split = pre_tokenizers.Split(Regex(rf"[^{PYTHON_WHITESPACE}]+\n?"), behavior="removed", invert=True)
    spaces = [chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace()]
    for char in [*spaces, "\x1b", "\u180e", "\u200b", "\ufeff", "a"]:
        text = f"ab{char}\ncd{char}{char}e\n"
        assert [piece for piece, _ in split.pre_tokenize_str(text)] == re.findall(r"\S+\n?", text), repr(char)


def test_bertweet_normalization_is_refused(bertweet: BertweetTokenizer, tmp_path: Path) -> None:
    normalizing = BertweetTokenizer(bertweet.vocab_file, bertweet.merges_file, normalization=True)
    with pytest.raises(ValueError, match="normalization=True"):
        save_tokenizer_json(normalizing, tmp_path, max_length=MAX_LENGTH)


def test_unconvertible_slow_tokenizer_is_named(bertweet: BertweetTokenizer, tmp_path: Path) -> None:
    phobert = PhobertTokenizer(bertweet.vocab_file, bertweet.merges_file)
    with pytest.raises(ValueError, match="PhobertTokenizer"):
        save_tokenizer_json(phobert, tmp_path, max_length=MAX_LENGTH)


def shared_model(name: str) -> Path:
    folder = (SHARED_MODELS / name).resolve()
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"needs {folder} (the project's ../shared/models is absent)")
    return folder


def tweets() -> list[str]:
    """The preprocessing corpus as is, plus long texts that need truncation."""
    lines = TWEETS.read_text(encoding="utf-8").split("\n")[:-1]
    texts = [line.replace("\\n", "\n").replace("\\t", "\t") for line in lines]
    return ["", *texts, " ".join(texts[:60]), "jajaja " * 200, "😀" * 300]


def assert_same_ids(tokenizer, path: Path) -> None:
    fast = Tokenizer.from_file(str(path))
    fast.enable_truncation(MAX_LENGTH)
    mismatches = [
        text
        for text in tweets()
        if fast.encode(text).ids != tokenizer(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    ]
    assert not mismatches, f"{len(mismatches)} texts differ, e.g. {mismatches[:3]!r}"


@pytest.mark.parametrize("name", ["robertuito-shape", "tweet-sentiment-minilm"])
def test_fast_tokenizer_round_trips(name: str, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(shared_model(name))
    assert tokenizer.is_fast
    assert_same_ids(tokenizer, save_tokenizer_json(tokenizer, tmp_path, max_length=MAX_LENGTH))


def test_other_slow_tokenizer_is_converted(tmp_path: Path) -> None:
    tokenizer = BertTokenizer(str(shared_model("tweet-sentiment-minilm") / "vocab.txt"))
    assert not tokenizer.is_fast
    assert_same_ids(tokenizer, save_tokenizer_json(tokenizer, tmp_path, max_length=MAX_LENGTH))


def test_merges_are_written_as_strings_that_read_back_as_the_same_tokenizer(tmp_path: Path) -> None:
    """RoBERTuito's 30k merges as "a b" strings: read faster at every start, the same ids."""
    tokenizer = AutoTokenizer.from_pretrained(shared_model("robertuito-shape"))
    path = save_tokenizer_json(tokenizer, tmp_path, max_length=MAX_LENGTH)
    merges = json.loads(path.read_text(encoding="utf-8"))["model"]["merges"]
    assert len(merges) > 1000 and all(isinstance(merge, str) and merge.count(" ") == 1 for merge in merges)
    assert_same_ids(tokenizer, path)


def test_merges_whose_symbols_have_spaces_stay_pairs() -> None:
    vocab = {"a": 0, " ": 1, "b": 2, "a ": 3, "a b": 4}
    spaced = Tokenizer(BPE(vocab, [("a", " "), ("a ", "b")]))
    saved = spaced.to_str()
    assert _merges_as_strings(saved) == saved
    plain = Tokenizer(BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    assert json.loads(_merges_as_strings(plain.to_str()))["model"]["merges"] == ["a b"]
