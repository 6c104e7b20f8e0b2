"""Write a model's tokenizer as the one `tokenizer.json` that the ONNX runtime reads with `tokenizers`.

Fast tokenizers are saved as they are. pysentimiento's English models (BERTweet) ship only the slow
`BertweetTokenizer` (fastBPE `vocab.txt` + `bpe.codes`), which transformers cannot convert: it is rebuilt
here as an equivalent `tokenizers` BPE, checked id for id in `tests/export/test_tokenizer.py`.
"""

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import BertweetTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import convert_slow_tokenizer

# BertweetTokenizer splits words with Python's `re.findall(r"\S+\n?")`: a newline right after a word is
# part of the word. Python's \s is `str.isspace()`, which unlike Oniguruma's \s includes \x1c-\x1f, so
# the class is spelled out (the test checks it against `str.isspace()`).
PYTHON_WHITESPACE = (
    r"\x{9}-\x{D}\x{1C}-\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}-\x{2029}\x{202F}\x{205F}\x{3000}"
)
_BERTWEET_WORD = Regex(rf"[^{PYTHON_WHITESPACE}]+\n?")
_END_OF_WORD = "</w>"


def save_tokenizer_json(tokenizer: PreTrainedTokenizerBase, out_dir: Path, max_length: int) -> Path:
    """Write `out_dir/tokenizer.json`, giving the ids of `tokenizer(text, truncation=True, max_length=...)`.

    Padding is off (the runtime pads a batch itself); truncation is the one pysentimiento applies, so a
    runtime that sets its own at the same length gets the same ids.
    """
    backend = _backend(tokenizer)
    backend.no_padding()
    backend.enable_truncation(max_length, direction=tokenizer.truncation_side)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.json"
    path.write_text(_merges_as_strings(backend.to_str()), encoding="utf-8")
    return path


def _merges_as_strings(saved: str) -> str:
    """`saved` with a BPE's merges as "a b" strings instead of ["a", "b"] pairs, when that says the
    same: `tokenizers` reads the strings ~0.012 s faster at every server start (RoBERTuito's 30k
    merges; MEMORY.md, issue 22). Pairs stay when a symbol has a space (a string cannot say where
    it splits) or the strings would read back as another tokenizer."""
    tokenizer = json.loads(saved)
    merges = (tokenizer.get("model") or {}).get("merges")
    if not merges or not all(isinstance(m, list) and not any(" " in s for s in m) for m in merges):
        return saved
    tokenizer["model"]["merges"] = [" ".join(merge) for merge in merges]
    compact = json.dumps(tokenizer, ensure_ascii=False)
    return compact if Tokenizer.from_str(compact).to_str() == saved else saved


def _backend(tokenizer: PreTrainedTokenizerBase) -> Tokenizer:
    """A `tokenizers.Tokenizer` of our own (a copy: the caller's tokenizer keeps its settings)."""
    if isinstance(tokenizer, PreTrainedTokenizerFast):
        return Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    if isinstance(tokenizer, BertweetTokenizer):
        return _bertweet(tokenizer)
    try:
        backend = convert_slow_tokenizer(tokenizer)
    except (ValueError, ImportError) as error:  # no converter, or its converter needs sentencepiece/protobuf
        raise ValueError(f"cannot write a tokenizer.json for {type(tokenizer).__name__}: {error}") from error
    _add_added_tokens(backend, tokenizer)
    return backend


def _bertweet(tokenizer: BertweetTokenizer) -> Tokenizer:
    """BertweetTokenizer(normalization=False) as a BPE with fastBPE's "xx@@" pieces renamed to "xx".

    The slow tokenizer marks the last symbol of a word with "</w>", merges by `bpe.codes` rank, then writes
    every symbol but the last with "@@" and looks each piece up, <unk> if absent. The same BPE with
    `end_of_word_suffix="</w>"` needs "xx@@" as "xx" and a final "xx" as "xx</w>", and needs every symbol
    that a merge reads or makes in its vocab: those fastBPE's vocab lacks get ids from len(tokenizer) on
    (the model's vocab_size). They come out only where the slow tokenizer gives <unk>, so a runtime maps
    ids >= vocab_size to <unk> for the same ids.
    """
    if tokenizer.normalization:
        raise ValueError(
            "BertweetTokenizer(normalization=True) first rewrites tweets with NLTK's TweetTokenizer, which a "
            "tokenizer.json cannot express; only normalization=False (bertweet-base's default) is supported"
        )
    added = {token.content: index for index, token in tokenizer.added_tokens_decoder.items()}
    vocab = {_bpe_symbol(piece): index for piece, index in tokenizer.encoder.items() if piece not in added}
    vocab.update(added)
    merges = [pair for pair in sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get) if len(pair) == 2]
    next_id = max(vocab.values()) + 1
    for first, second in merges:
        for symbol in (first, second, first + second):
            if symbol not in vocab:
                vocab[symbol] = next_id
                next_id += 1

    backend = Tokenizer(
        BPE(
            vocab, merges, unk_token=str(tokenizer.unk_token), end_of_word_suffix=_END_OF_WORD, fuse_unk=False
        )
    )
    backend.pre_tokenizer = pre_tokenizers.Split(_BERTWEET_WORD, behavior="removed", invert=True)
    cls, sep = str(tokenizer.cls_token), str(tokenizer.sep_token)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} {sep} $B {sep}",
        special_tokens=[(cls, tokenizer.cls_token_id), (sep, tokenizer.sep_token_id)],
    )
    backend.decoder = decoders.BPEDecoder(suffix=_END_OF_WORD)
    _add_added_tokens(backend, tokenizer)
    return backend


def _bpe_symbol(piece: str) -> str:
    """fastBPE's "xx@@" (not the word's end) -> "xx"; a word's last piece "xx" -> "xx</w>"."""
    return piece[:-2] if piece.endswith("@@") and len(piece) > 2 else piece + _END_OF_WORD


def _add_added_tokens(backend: Tokenizer, tokenizer: PreTrainedTokenizerBase) -> None:
    """Carry the added tokens (<mask>, ...) over with their flags, and check they kept their ids."""
    for index, token in sorted(tokenizer.added_tokens_decoder.items()):
        copy = AddedToken(
            token.content,
            single_word=token.single_word,
            lstrip=token.lstrip,
            rstrip=token.rstrip,
            normalized=token.normalized,
            special=token.special,
        )
        (backend.add_special_tokens if token.special else backend.add_tokens)([copy])
        if backend.token_to_id(token.content) != index:
            raise ValueError(
                f"added token {token.content!r} got id {backend.token_to_id(token.content)}, not {index}"
            )
