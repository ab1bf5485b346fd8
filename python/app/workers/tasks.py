"""Tasks of the example service (seed 000, AgentHub `app.workers.tasks`).

The Rust worker implements the same tasks natively under the same Celery names
(``src/tasks/``); this module is what Python producers import
(``example_task.delay(4, 5)``) and what a real ``celery worker -A app.workers`` runs.
The two implementations agree:

* ``app.workers.tasks.example_task(x, y)`` returns ``x + y`` with Python semantics
  (ints add, floats add, strings concatenate).
* ``app.workers.tasks.task_file_ingestion(file_paths, source_name="documents")``
  reads each file, extracts its text, splits it into chunks of at most
  ``CHUNK_SIZE`` characters (Unicode code points) overlapping by ``CHUNK_OVERLAP``
  characters and stores them in the Redis of the *result backend*:

  - ``DEL`` + ``RPUSH ingest:<source_name>:chunks:<file_path> <json>...``, one JSON
    object per chunk, in order:
    ``{"file": <file_path>, "index": <i>, "text": <chunk>, "source": <source_name>}``
    (re-ingesting a file replaces its list);
  - ``SADD ingest:<source_name>:files <file_path>``.

  ``<file_path>`` is the path exactly as passed. After each file the task reports
  state ``PROGRESS`` with ``{"current", "total", "file", "chunks"}``; it returns
  ``True``. A missing file raises ``FileNotFoundError`` whose message contains the
  path; an unreadable document raises :class:`IngestionError`.

Text extraction (by extension, case-insensitive): ``.txt .text .log .csv .rst .json
.md .markdown`` are UTF-8 text kept verbatim (undecodable bytes replaced, a leading
BOM dropped); ``.html``/``.htm`` keep the visible text only (``<head>``, ``<script>``,
``<style>``, ``<template>`` and comments dropped, entities decoded, block elements
become line breaks, other whitespace runs collapse to one space); ``.pdf`` needs a
PDF text extractor, which this pure-Python twin does not have, so it raises
:class:`IngestionError` (the Rust worker extracts PDF text); anything else is read
as UTF-8 text if it decodes, else :class:`IngestionError`.

Chunking: chunk ``i+1`` starts ``CHUNK_OVERLAP`` characters before chunk ``i``
ends. A chunk that would be cut mid-text prefers to end just before a whitespace
character found in the last 10% of its window (so words are not split); chunks
that are only whitespace are dropped.
"""
from __future__ import annotations

import html.parser
import json
import os
from typing import List, Tuple

from celery import shared_task

CHUNK_SIZE = 4000
CHUNK_OVERLAP = 400

TEXT_EXTENSIONS = {".txt", ".text", ".log", ".csv", ".rst", ".json", ".md", ".markdown"}

__all__ = [
    "CHUNK_OVERLAP",
    "CHUNK_SIZE",
    "IngestionError",
    "chunk_text",
    "example_task",
    "extract_text",
    "task_file_ingestion",
]


class IngestionError(Exception):
    """A document could not be ingested.

    The Rust worker stores its ingestion failures with ``exc_type`` ``IngestionError``
    and ``exc_module`` ``app.workers.tasks``, so a client that has imported this module
    gets this very class back from ``AsyncResult.get()``.
    """


@shared_task(name="app.workers.tasks.example_task")
def example_task(x, y):
    """Example task that adds two numbers."""
    return x + y


# --------------------------------------------------------------------------- HTML

_BLANK_LINE_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "hr",
                    "table", "ul", "ol", "dl"}
_LINE_TAGS = {"div", "li", "tr", "dt", "dd", "section", "article", "header", "footer",
              "nav", "aside", "main", "form", "fieldset", "figure", "figcaption",
              "address", "details", "summary", "title", "caption", "body", "html"}
_HIDDEN_TAGS = {"script", "style", "template", "head"}


def _break_weight(tag: str) -> int:
    return 2 if tag in _BLANK_LINE_TAGS else 1 if tag in _LINE_TAGS else 0


class _VisibleText(html.parser.HTMLParser):
    """Visible text of an HTML document, for indexing rather than display."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: List[str] = []
        self._space = False
        self._breaks = 0
        self._hidden: List[str] = []

    # Whitespace and block boundaries become at most one separator, emitted before
    # the next visible character (no leading/trailing whitespace).
    def _push(self, text: str) -> None:
        for ch in text:
            if ch.isspace():
                self._space = True
                continue
            if self.out:
                if self._breaks:
                    self.out.append("\n" * self._breaks)
                elif self._space:
                    self.out.append(" ")
            self._space, self._breaks = False, 0
            self.out.append(ch)

    def _block(self, weight: int) -> None:
        self._breaks = max(self._breaks, weight)

    def handle_starttag(self, tag, attrs):
        if self._hidden:
            if tag == self._hidden[-1] and tag != "head":
                self._hidden.append(tag)
            if tag == "body" and self._hidden == ["head"]:  # </head> is optional
                self._hidden.clear()
                self._block(_break_weight(tag))
            return
        if tag in _HIDDEN_TAGS:
            self._hidden.append(tag)
        elif tag == "br":
            self._breaks = min(self._breaks + 1, 2)
        elif tag in ("td", "th"):
            self._push(" ")
        else:
            self._block(_break_weight(tag))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in _HIDDEN_TAGS and self._hidden and self._hidden[-1] == tag:
            self._hidden.pop()

    def handle_endtag(self, tag):
        if self._hidden:
            if tag == self._hidden[-1]:
                self._hidden.pop()
            return
        self._block(_break_weight(tag))

    def handle_data(self, data):
        if not self._hidden:
            self._push(data)

    def text(self) -> str:
        return "".join(self.out)


def _html_to_text(source: str) -> str:
    parser = _VisibleText()
    parser.feed(source)
    parser.close()
    return parser.text()


# --------------------------------------------------------------------------- files


def _ingestion_error(path: str, reason: str) -> IngestionError:
    return IngestionError(f"cannot read {path}: {reason}")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        # Celery stores only exc.args, which for OSError leaves the filename out;
        # put the path in the message so the client sees it.
        raise FileNotFoundError(f"No such file or directory: '{path}'") from None


def extract_text(path: str) -> str:
    """The text of one document, chosen by its extension."""
    data = _read(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".pdf":
        raise _ingestion_error(path, "PDF text extraction is not available in the Python worker")
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    if ext in (".html", ".htm"):
        return _html_to_text(body.decode("utf-8", errors="replace"))
    if ext in TEXT_EXTENSIONS:
        return body.decode("utf-8", errors="replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise _ingestion_error(path, "unsupported file type (not UTF-8 text)") from None


def _chunk_spans(text: str, size: int, overlap: int) -> List[Tuple[int, int]]:
    if overlap >= size:
        raise ValueError(f"chunk overlap ({overlap}) must be smaller than chunk size ({size})")
    n = len(text)
    lookback = size // 10
    spans = []
    start = 0
    while start < n:
        end = min(start + size, n)
        if end < n:
            for p in range(end, end - lookback - 1, -1):
                if text[p].isspace() and p > start + overlap:
                    end = p
                    break
        spans.append((start, end))
        if end == n:
            break
        start = end - overlap
    return spans


def chunk_text(text: str, size: int = CHUNK_SIZE, overlap: int = CHUNK_OVERLAP) -> List[str]:
    """Overlapping chunks of ``text`` (see the module docstring)."""
    chunks = (text[a:b] for a, b in _chunk_spans(text, size, overlap))
    return [c for c in chunks if c.strip()]


def _backend_redis():
    from app.workers.celery_app import celery_app

    client = getattr(celery_app.backend, "client", None)
    if client is None:  # not a Redis result backend
        import redis

        client = redis.Redis.from_url(celery_app.conf.result_backend)
    return client


@shared_task(name="app.workers.tasks.task_file_ingestion", bind=True)
def task_file_ingestion(self, file_paths: List[str], source_name: str = "documents"):
    """Ingest documents into the result backend's Redis (see module docstring).

    Returns:
        bool: True when every file was ingested.
    """
    if isinstance(file_paths, str):
        file_paths = [file_paths]
    client = _backend_redis()
    files_key = f"ingest:{source_name}:files"
    total = len(file_paths)
    for i, path in enumerate(file_paths):
        chunks = chunk_text(extract_text(path))
        chunks_key = f"ingest:{source_name}:chunks:{path}"
        with client.pipeline(transaction=True) as pipe:
            pipe.delete(chunks_key)
            if chunks:
                pipe.rpush(chunks_key, *[
                    json.dumps({"file": path, "index": n, "text": text, "source": source_name})
                    for n, text in enumerate(chunks)
                ])
            pipe.sadd(files_key, path)
            pipe.execute()
        if self.request.id:
            self.update_state(state="PROGRESS", meta={"current": i + 1, "total": total,
                                                      "file": path, "chunks": len(chunks)})
    return True


# --------------------------------------------------------------------------------
# Pure-Python tasks in the style of the seed services. No Rust handler exists for
# these names, so rust-celery-worker runs these very functions (through its
# embedded interpreter), with Celery's request, retry, hooks and signals.

import logging  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

logger = logging.getLogger(__name__)

SENT_EMAILS_KEY = "app:sent_emails"


@shared_task(name="app.workers.tasks.send_email_task", bind=True, max_retries=3,
             default_retry_delay=1, rate_limit="100/m")
def send_email_task(self, to, subject, body=""):
    """Simulates sending an e-mail; returns a receipt."""
    if "@" not in to:
        raise ValueError(f"invalid recipient {to!r}")
    time.sleep(0.01)
    return {"to": to, "subject": subject, "message_id": f"<{self.request.id}@example>",
            "attempt": self.request.retries + 1}


@shared_task(name="app.workers.tasks.cleanup_old_sessions_task")
def cleanup_old_sessions_task(days=30):
    """Pretends to delete sessions older than ``days``; returns how many."""
    return {"deleted": max(0, 100 - days), "older_than_days": days}


@shared_task(name="app.workers.tasks.batch_process_task", bind=True, track_started=True)
def batch_process_task(self, items, delay=0.05):
    """Processes ``items`` one by one, reporting PROGRESS after each."""
    done = []
    for i, item in enumerate(items, start=1):
        time.sleep(delay)
        done.append(str(item).upper())
        self.update_state(state="PROGRESS", meta={"current": i, "total": len(items)})
    return {"processed": len(done), "items": done}


@shared_task(name="app.workers.tasks.flaky_api_task", bind=True, max_retries=3)
def flaky_api_task(self, failures=2):
    """Fails with ConnectionError ``failures`` times, retrying after 0.1 s."""
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError(f"upstream down (attempt {self.request.retries})"),
                         countdown=0.1)
    return {"attempts": self.request.retries + 1}


@shared_task(name="app.workers.tasks.parent_task", bind=True)
def parent_task(self, x):
    """Sends a child task; returns the child's id (its parent_id is this task)."""
    child = example_task.delay(x, 1)
    return child.id


# --------------------------------------------------------------------------------
# Benchmark tasks (bench/bench.py, scenario `python`): pure Python, no Rust handler,
# so both workers run these bodies in their prefork pool processes.

CPU_TASK_N = 60000  # one call costs ~3 ms in CPython 3.11 on the 2-core bench machine


@shared_task(name="app.workers.tasks.noop_task")
def noop_task():
    """Does nothing: measures the per-task overhead of the worker and its pool."""
    return None


@shared_task(name="app.workers.tasks.cpu_task")
def cpu_task(n=CPU_TASK_N):
    """CPU-bound pure Python: the sum of the squares of 0 .. n-1."""
    return sum(i * i for i in range(n))
