"""POPE: yes/no object-presence questions, answered greedily and scored as POPE's authors do.

The input is POPE's published format, one JSON object per line: `question_id`, `image` (a file
under the image root), `text` (the question), `label` ("yes" or "no"). One evaluator serves a
real POPE file and the demo world's export (`mdpo_data.demo.hallucination`), so the miniature
and a real run report the same five numbers. A malformed line or a missing image is a counted,
one-line error, never a crash: one bad line must not cost an hour of answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

LABELS = ("yes", "no")
FIELDS = ("question_id", "image", "text", "label")


@dataclass(frozen=True)
class Question:
    question_id: int | str
    image: str
    text: str
    label: str


def parse_answer(text: str) -> str:
    """POPE's rule: keep the first sentence, drop commas; "No", "no" or "not" as a word means no,
    anything else yes (an empty answer counts as yes, as in POPE)."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def scores(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (yes = positive) and yes-ratio; 0.0 where undefined."""
    pairs = list(zip(predictions, labels, strict=True))
    tp = sum(p == "yes" and y == "yes" for p, y in pairs)
    fp = sum(p == "yes" and y == "no" for p, y in pairs)
    tn = sum(p == "no" and y == "no" for p, y in pairs)
    fn = sum(p == "no" and y == "yes" for p, y in pairs)
    n = len(pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": n, "accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": (tp + fp) / n if n else 0.0}


def parse_line(line: str) -> Question:
    """One line of a POPE file -> Question; ValueError names the problem."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from None
    except RecursionError:
        raise ValueError("not JSON (nested too deeply)") from None
    if not isinstance(item, dict):
        raise ValueError("not a JSON object")
    missing = [f for f in FIELDS if f not in item]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if not isinstance(item["question_id"], (int, str)) or isinstance(item["question_id"], bool):
        raise ValueError("question_id must be an integer or a string")
    for name in ("image", "text"):
        if not isinstance(item[name], str) or not item[name]:
            raise ValueError(f"{name} must be a non-empty string")
    if item["label"] not in LABELS:
        raise ValueError(f"label must be yes or no, got {item['label']!r}")
    return Question(item["question_id"], item["image"], item["text"], item["label"])


def read_questions(path: str | Path) -> tuple[list[Question], list[str]]:
    """(questions, errors): every malformed line is one error "FILE:LINE: problem"."""
    path = Path(path)
    questions, errors = [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                questions.append(parse_line(line))
            except ValueError as error:
                errors.append(f"{path.name}:{number}: {error}")
    return questions, errors


def load_images(questions: list[Question], image_root: str | Path, *, max_pixels: int = 40_000_000):
    """({image name: RGB image}, errors): a missing, escaping or undecodable image is one error
    per question that needs it; its questions are left out."""
    from mdpo_data.build.images import load_image
    from mdpo_data.sources.records import BadRow, resolve_under

    images, bad, errors = {}, {}, []
    for q in questions:
        if q.image not in images and q.image not in bad:
            try:
                path = resolve_under(image_root, q.image)
                images[q.image] = load_image(path.read_bytes(), max_pixels=max_pixels, where=q.image)[0]
            except BadRow as error:
                bad[q.image] = str(error)
            except OSError as error:
                bad[q.image] = f"cannot read image {q.image!r} ({error.strerror or error})"
        if q.image in bad:
            errors.append(f"question {q.question_id}: {bad[q.image]}")
    return images, errors


def answer(model, processor, questions: list[Question], images: dict, *, batch_size: int = 16,
           max_new_tokens: int = 16, progress=None) -> list[dict]:
    """Per answerable question: {question_id, image, text, label, answer, prediction}."""
    import torch

    from mdpo_data.bpo.generate import greedy_texts

    kept = [q for q in questions if q.image in images]
    with torch.inference_mode():
        generated = greedy_texts(model, processor, [images[q.image] for q in kept], [q.text for q in kept],
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    return [{"question_id": q.question_id, "image": q.image, "text": q.text, "label": q.label,
             "answer": g.text, "prediction": parse_answer(g.text)} for q, g in zip(kept, generated)]


def write_answers(out: str | Path, answers: list[dict]) -> Path:
    """OUT/answers.jsonl: the per-question answers as JSON lines, written atomically and never
    through a symlink."""
    from mdpo_data.format.folder import write_owned

    text = "".join(json.dumps(a, ensure_ascii=False, sort_keys=True) + "\n" for a in answers)
    return write_owned(out, Path(out) / "answers.jsonl", text.encode())


def load_with_adapter(model_id_or_path: str, adapter: str | None, *, device: str = "auto"):
    """(model, processor): a local folder or built-in name, plus an mdpo-train LoRA adapter folder."""
    from mdpo_data.scoring.models import load_model

    model, processor = load_model(model_id_or_path, device=device)
    if adapter:
        from peft import PeftModel

        from mdpo_data.format.integrity import weights_problems

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ValueError(f"--adapter {adapter}: no adapter_config.json (an mdpo-train LoRA run folder?)")
        problems = weights_problems(adapter)
        if problems:
            raise ValueError(f"--adapter: {problems[0]}")
        try:
            model = PeftModel.from_pretrained(model, adapter).eval()
        except Exception as error:  # noqa: BLE001 - peft/safetensors errors: one line, not a traceback
            text = " ".join(str(error).split())[:240]
            raise ValueError(f"--adapter {adapter}: cannot be applied to this model "
                             f"({type(error).__name__}: {text})") from None
    return model, processor
