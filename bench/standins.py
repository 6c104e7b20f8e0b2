"""Stand-ins for pysentimiento's hub models, which no machine here can download: each (task, lang)
model's architecture and shape with seeded random weights, its label set and problem type, and a
tokenizer of the right kind.

    python -m bench.standins --task ner --lang es --out /tmp/ner-es [--tiny]

Shapes: Spanish (RoBERTuito) and its ner/pos models from ../shared/models/robertuito-shape; English
text tasks at BERTweet's shape (../shared/models/bertweet-shape) with RoBERTuito's tokenizer (its ids
stay below BERTweet's 64,001; BERTweet's own cannot be downloaded); Italian, Portuguese and
context_hate_speech (BETO) at BERT-base's shape with the uncased WordPiece tokenizer of
../shared/models/tweet-sentiment-minilm (the real ones are cased, 30-31k tokens: a stand-in for
memory and speed, not for their ids). `tiny` keeps the shape's kind and vocabulary at 2 layers and
hidden size 128: what tests export in seconds. Predictions of such models mean nothing.
"""

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"
ROBERTUITO = SHARED_MODELS / "robertuito-shape"
BERTWEET = SHARED_MODELS / "bertweet-shape"
WORDPIECE = SHARED_MODELS / "tweet-sentiment-minilm"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

MULTI = "multi_label_classification"
SINGLE = "single_label_classification"
_EMOTIONS = ["others", "joy", "sadness", "anger", "surprise", "disgust", "fear"]
_IRONY = ["not ironic", "ironic"]
_SENTIMENT = ["NEG", "NEU", "POS"]
# pysentimiento.lince.ner.id2label and pysentimiento.lince.pos.id2label.
NER_KINDS = ["EVENT", "GROUP", "LOC", "ORG", "OTHER", "PER", "PROD", "TIME", "TITLE"]
NER_LABELS = ["O"] + [f"{bio}-{kind}" for kind in NER_KINDS for bio in "BI"]
POS_TAGS = ["VERB", "PUNCT", "PRON", "NOUN", "DET", "ADV", "ADP", "INTJ", "CONJ", "ADJ", "AUX", "SCONJ"]
POS_LABELS = [f"B-{tag}" for tag in [*POS_TAGS, "PART", "PROPN", "NUM", "UNK", "X"]]

# (task, lang) -> (labels in id order, problem type), from pysentimiento's training modules:
# sentipolc.py (it sentiment: pos/neg, multi-label), sentiment_pt.py, hate.py's get_id2label,
# irony.py, context_hate.py. Emotion's labels come from each language's dataset on the hub, which
# is not in the wheel: es/en are the published models' labels; it/pt reuse them (multi-label, as
# emotion.py trains a dataset with a "labels" list) and are assumptions.
LABELS: dict[tuple[str, str], tuple[list[str], str]] = {
    ("sentiment", "es"): (_SENTIMENT, SINGLE),
    ("emotion", "es"): (_EMOTIONS, SINGLE),
    ("hate_speech", "es"): (["hateful", "targeted", "aggressive"], MULTI),
    ("irony", "es"): (_IRONY, SINGLE),
    ("ner", "es"): (NER_LABELS, SINGLE),
    ("pos", "es"): (POS_LABELS, SINGLE),
    ("targeted_sentiment", "es"): (_SENTIMENT, SINGLE),
    (
        "context_hate_speech",
        "es",
    ): (
        ["CALLS", "WOMEN", "LGBTI", "RACISM", "CLASS", "POLITICS", "DISABLED", "APPEARANCE", "CRIMINAL"],
        MULTI,
    ),
    ("sentiment", "en"): (_SENTIMENT, SINGLE),
    ("emotion", "en"): (_EMOTIONS, SINGLE),
    ("hate_speech", "en"): (["hateful", "targeted", "aggressive"], MULTI),
    ("irony", "en"): (_IRONY, SINGLE),
    ("ner", "en"): (NER_LABELS, SINGLE),
    ("pos", "en"): (POS_LABELS, SINGLE),
    ("sentiment", "it"): (["pos", "neg"], MULTI),
    ("emotion", "it"): (_EMOTIONS, MULTI),
    ("hate_speech", "it"): (["hateful", "stereotype"], MULTI),
    ("irony", "it"): (_IRONY, SINGLE),
    ("sentiment", "pt"): (_SENTIMENT, SINGLE),
    ("emotion", "pt"): (_EMOTIONS, MULTI),
    ("hate_speech", "pt"): (["Sexism", "Body", "Racism", "Ideology", "Homophobia"], MULTI),
    ("irony", "pt"): (_IRONY, SINGLE),
}
_TINY = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 256}


def shape(task: str, lang: str) -> tuple[dict[str, Any], Path]:
    """The config (as a dict) and the tokenizer dir of (task, lang)'s stand-in."""
    if lang in ("it", "pt") or task == "context_hate_speech":
        config = {
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
            "pad_token_id": 0,
        }
        return config, WORDPIECE
    shape_dir = BERTWEET if lang == "en" and task not in ("ner", "pos") else ROBERTUITO
    config = json.loads((shape_dir / "config.json").read_text())
    for key in (
        "architectures",
        "id2label",
        "label2id",
        "problem_type",
        "transformers_version",
        "torch_dtype",
    ):
        config.pop(key, None)
    return config, ROBERTUITO


def build_standin(
    task: str, lang: str, out: Path, tiny: bool = False, seed: int = 0, int8_hostile: int = 0
) -> Path:
    """Write a transformers model dir for (task, lang): random weights, pysentimiento's labels.

    `int8_hostile` layers get FFN input weights scaled 30x, and in them a row of outliers (1000x
    the weights) behind a LayerNorm feature set to 0: fp32 never multiplies them, but they set the scale of
    every 8-bit block they are in, and the blocks' other weights round to 0, so INT8 loses the
    labels (what the export's gate must catch, tests/export/test_gate.py)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    labels, problem_type = LABELS[(task, lang)]
    values, tokenizer_dir = shape(task, lang)
    if tiny:
        values |= _TINY
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        **values,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=None if task in ("ner", "pos") else problem_type,
    )
    torch.manual_seed(seed)
    head = AutoModelForTokenClassification if task in ("ner", "pos") else AutoModelForSequenceClassification
    model = head.from_config(config)
    with torch.no_grad():
        for layer in model.base_model.encoder.layer[:int8_hostile]:
            norm, weight = layer.attention.output.LayerNorm, layer.intermediate.dense.weight
            norm.weight[0] = norm.bias[0] = 0.0
            weight *= 30  # the FFN outweighs the residual: what it loses, the label loses
            weight[:, 0] = 1000 * weight.abs().max()
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.standins", description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--lang", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 128: for tests")
    parser.add_argument(
        "--int8-hostile", type=int, default=0, metavar="N", help="weights that 8 bits cannot copy in N layers"
    )
    args = parser.parse_args()
    print(build_standin(args.task, args.lang, args.out, args.tiny, int8_hostile=args.int8_hostile))


if __name__ == "__main__":
    main()
