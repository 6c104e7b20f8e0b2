"""The torch backend: pysentimiento's own analyzer, with gradients off.

pysentimiento never disables gradients, and its batch path goes through a Trainer and a
`datasets.Dataset`; here the model it loads is put in eval mode with every parameter frozen,
and batches are one padded forward pass under `torch.inference_mode()`.
"""

from collections.abc import Sequence

import torch
from pysentimiento import create_analyzer

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
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)
        return probs.tolist()
