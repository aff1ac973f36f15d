"""Real text every machine has: docstrings of Python's standard library, split by module.

Training and held-out texts come from *different* modules, so evaluation text
is never seen in training. Deterministic for a given Python version.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import warnings
from typing import List, Sequence, Tuple

TRAIN_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fnmatch",
    "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html",
    "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "locale",
    "logging", "mailbox", "mimetypes", "multiprocessing", "numbers", "operator", "optparse", "os", "pathlib",
    "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "random",
)
HELDOUT_MODULES = (
    "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver",
    "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings",
    "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo",
)

_WS = re.compile(r"\s+")


def _paragraphs(doc: str, min_chars: int, max_chars: int) -> List[str]:
    out = []
    for para in re.split(r"\n\s*\n", doc):
        text = _WS.sub(" ", para).strip()
        if len(text) < min_chars or text.startswith((">>>", "...")) or text.count(">>>"):
            continue
        out.append(text[:max_chars])
    return out


def module_texts(name: str, min_chars: int = 60, max_chars: int = 400) -> List[str]:
    """Docstring paragraphs of a module and of its public classes, functions and methods."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except Exception:  # a module missing from this Python build is simply skipped
        return []
    docs = [inspect.getdoc(module) or ""]
    for attr in sorted(vars(module)):
        if attr.startswith("_"):
            continue
        obj = getattr(module, attr, None)
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        docs.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            for meth in sorted(vars(obj)):
                if not meth.startswith("_"):
                    docs.append(inspect.getdoc(getattr(obj, meth, None)) or "")
    seen, out = set(), []
    for doc in docs:
        for text in _paragraphs(doc, min_chars, max_chars):
            if text not in seen:
                seen.add(text)
                out.append(text)
    return out


def stdlib_corpus(n_train: int, n_eval: int, seed: int = 0, train_modules: Sequence[str] = TRAIN_MODULES,
                  eval_modules: Sequence[str] = HELDOUT_MODULES) -> Tuple[List[str], List[str]]:
    """``(train texts, held-out texts)``: up to ``n_train`` / ``n_eval`` paragraphs, shuffled with ``seed``."""
    for name, value in (("n_train", n_train), ("n_eval", n_eval)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    rng = random.Random(seed)
    splits = []
    for modules, n in ((train_modules, n_train), (eval_modules, n_eval)):
        texts = sorted({t for m in modules for t in module_texts(m)})
        rng.shuffle(texts)
        splits.append(texts[:n])
    if len(splits[0]) < 2 or len(splits[1]) < 2:
        raise RuntimeError("stdlib_corpus: found fewer than 2 docstring paragraphs; is this a stripped Python "
                           "(python -OO removes docstrings)?")
    return splits[0], splits[1]


def query_document_pairs(texts: Sequence[str], min_words: int = 8) -> Tuple[List[str], List[str]]:
    """Split each text into a query (first half of its words) and a document (the rest)."""
    queries, docs = [], []
    for text in texts:
        words = text.split()
        if len(words) < min_words:
            continue
        half = len(words) // 2
        queries.append(" ".join(words[:half]))
        docs.append(" ".join(words[half:]))
    return queries, docs


def load_texts(path: str, text_field: str = "text", min_chars: int = 1) -> List[str]:
    """A user's texts: JSONL (one JSON object per line, its ``text_field`` string) when the file name ends in
    ``.jsonl``/``.json`` or its first non-empty line is a JSON object, else plain text with one text per
    paragraph (blocks separated by blank lines; a file without blank lines gives one text per line).
    Whitespace is collapsed; texts shorter than ``min_chars`` are dropped. Clear errors name the file and line."""
    import json
    import os

    if not os.path.isfile(path):
        raise ValueError(f"data: expected a text or JSONL file, got {path!r} (not a file)")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    lines = raw.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if path.endswith((".jsonl", ".json")) or first.startswith("{"):
        texts = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"data: {path}:{number}: expected one JSON object per line ({exc})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise ValueError(f"data: {path}:{number}: expected an object with a string field {text_field!r} "
                                 f"(choose the field with --text-field)")
            texts.append(record[text_field])
    else:
        blocks = re.split(r"\n\s*\n", raw)
        texts = blocks if len(blocks) > 1 else lines
    texts = [t for t in (_WS.sub(" ", t).strip() for t in texts) if len(t) >= min_chars]
    if len(texts) < 2:
        raise ValueError(f"data: {path}: expected at least 2 texts, found {len(texts)}")
    return texts


def split_texts(texts: Sequence[str], n_train: int, n_eval: int, seed: int = 0) -> Tuple[List[str], List[str]]:
    """``(train, held-out)`` from one list: shuffled with ``seed``; the held-out part is ``n_eval`` texts (at most
    a quarter of them, at least one), never also in training; training takes up to ``n_train`` of the rest."""
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    n_held = max(1, min(n_eval, len(texts) // 4))
    return texts[n_held:][:n_train], texts[:n_held]
