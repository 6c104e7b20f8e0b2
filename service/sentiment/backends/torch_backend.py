"""The torch backend: pysentimiento's own analyzer, with gradients off.

pysentimiento never disables gradients, and its batch path goes through a Trainer and a
`datasets.Dataset`; here the model it loads is put in eval mode with every parameter frozen,
and batches are one padded forward pass under `torch.inference_mode()`.
"""

from collections.abc import Sequence

import torch
from pysentimiento import create_analyzer

from service.sentiment.tokens import WordLabel

MAX_LENGTH = 128  # pysentimiento sets tokenizer.model_max_length = 128


class TorchModel:
    def __init__(self, task: str, lang: str, source: str, num_threads: int) -> None:
        torch.set_num_threads(num_threads)
        analyzer = create_analyzer(task=task, lang=lang, model_name=source)
        self.model = analyzer.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = analyzer.tokenizer
        config = self.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.multi_label = config.problem_type == "multi_label_classification"

    def predict_probas(self, texts: Sequence[str]) -> list[list[float]]:
        inputs = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        return self._probas(logits)

    def predict_pair_probas(self, texts: Sequence[str], contexts: Sequence[str]) -> list[list[float]]:
        inputs = self.tokenizer(
            [str(text) for text in texts],
            list(contexts),
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        with torch.inference_mode():
            return self._probas(self.model(**inputs).logits)

    def predict_word_labels(self, words: Sequence[Sequence[str]]) -> list[list[WordLabel | None]]:
        """pysentimiento's token path: words encoded with is_split_into_words, first sub-token's argmax
        (and its softmax probability)."""
        inputs = self.tokenizer(
            [list(w) for w in words],
            is_split_into_words=True,
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        with torch.inference_mode():
            scores, label_ids = torch.softmax(self.model(**inputs).logits, dim=2).max(dim=2)
        result = []
        rows = zip(words, label_ids.tolist(), scores.tolist(), strict=True)
        for index, (sentence, ids, row) in enumerate(rows):
            first: dict[int, WordLabel] = {}
            for position, word_id in enumerate(inputs.word_ids(index)):
                if word_id is not None and word_id not in first:
                    first[word_id] = (ids[position], row[position])
            result.append([first.get(w) for w in range(len(sentence))])
        return result

    def _probas(self, logits: torch.Tensor) -> list[list[float]]:
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)
        return probs.tolist()
