"""app.workers.tasks.task_file_ingestion: files are read, chunked (at most 4000
characters, consecutive chunks overlapping by exactly 400; a chunk may end up to 10%
early at whitespace so words are not split) and stored in the result backend's Redis:

* set  ``ingest:<source_name>:files``                 -> file paths as given
* list ``ingest:<source_name>:chunks:<file_path>``    -> JSON objects
  ``{"file": path, "index": i, "text": "...", "source": source_name}`` in order.
"""
from __future__ import annotations

import json
import random
import uuid

import pytest

from helpers import INGEST_FIXTURES

GET_TIMEOUT = 60
CHUNK, OVERLAP = 4000, 400


def _fixture(name: str) -> str:
    path = INGEST_FIXTURES / name
    if not path.is_file():
        pytest.fail(f"ingestion fixture {path} is missing (tests/fixtures/ingest/)")
    return str(path)


def _source() -> str:
    return f"src-{uuid.uuid4().hex[:8]}"


def _chunks(backend, source: str, path: str) -> list:
    raw = backend.lrange(f"ingest:{source}:chunks:{path}", 0, -1)
    items = [json.loads(x) for x in raw]
    for i, item in enumerate(items):
        assert item["file"] == path
        assert item["index"] == i
        assert item["source"] == source
        assert isinstance(item["text"], str)
    return items


def _files(backend, source: str) -> set:
    return {x.decode() for x in backend.smembers(f"ingest:{source}:files")}


def _rebuild(texts: list) -> str:
    out = texts[0] if texts else ""
    for t in texts[1:]:
        out += t[OVERLAP:]
    return out


def _check_chunking(texts: list, total_len: int) -> None:
    """Invariants of the chunker, whether it cuts at exactly 4000 characters or up to
    10% earlier at whitespace."""
    assert texts, "no chunks"
    for t in texts[:-1]:
        assert CHUNK - CHUNK // 10 <= len(t) <= CHUNK, len(t)
    assert 0 < len(texts[-1]) <= CHUNK
    for a, b in zip(texts, texts[1:]):
        assert a[-OVERLAP:] == b[:OVERLAP], "consecutive chunks must overlap by 400 chars"
    if total_len <= CHUNK:
        assert len(texts) == 1


def _exact_spans(total_len: int) -> list:
    """Chunk lengths for text without whitespace: windows start every 3600 chars."""
    lens, start = [], 0
    while True:
        end = min(start + CHUNK, total_len)
        lens.append(end - start)
        if end == total_len:
            return lens
        start = end - OVERLAP


def _prose(n_chars: int, seed: int) -> str:
    """Distinct, non-repeating text with some non-ASCII characters."""
    rng = random.Random(seed)
    words = ["alpha", "bravo", "café", "delta", "echo", "naïve", "golf", "hotel",
             "über", "juliet", "kilo", "lima—", "mike", "🦀crab", "oscar", "papa"]
    out, n = [], 0
    i = 0
    while n < n_chars:
        w = f"{rng.choice(words)}{i}"
        out.append(w)
        n += len(w) + 1
        i += 1
        if i % 17 == 0:
            out.append("\n")
    return " ".join(out)[:n_chars]


def _dense(n_chars: int, seed: int) -> str:
    """Text without any whitespace (so chunk boundaries are exact), non-ASCII included."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzé日本語🦀—ABCDEFGHIJ0123456789.,;"
    return "".join(rng.choice(alphabet) for _ in range(n_chars))


def test_ingest_large_text_files_chunked(celery_client, worker, backend, tmp_path):
    from app.workers.tasks import task_file_ingestion

    worker()
    files = {
        # no whitespace: boundaries are exact; lengths count characters, not bytes
        "dense.txt": _dense(9500, 1),
        "exact.txt": _dense(4000, 2),
        "plus_one.md": _dense(4001, 3),
        # prose: chunks may end a little early at whitespace
        "prose.txt": _prose(9500, 4),
        "huge.md": "# Heading\n\n" + _prose(30000, 5),
    }
    paths = {}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        paths[name] = str(tmp_path / name)

    source = _source()
    res = task_file_ingestion.delay(list(paths.values()), source_name=source)
    assert res.get(timeout=GET_TIMEOUT) is True
    assert _files(backend, source) == set(paths.values())

    for name, text in files.items():
        texts = [c["text"] for c in _chunks(backend, source, paths[name])]
        _check_chunking(texts, len(text))
        assert _rebuild(texts) == text, name
        if name in ("dense.txt", "exact.txt", "plus_one.md"):
            assert [len(t) for t in texts] == _exact_spans(len(text)), name
    # 9500 chars -> windows [0,4000) [3600,7600) [7200,9500)
    assert _exact_spans(9500) == [4000, 4000, 2300]
    assert _exact_spans(4001) == [4000, 401]
    assert _exact_spans(4000) == [4000]
    assert len(_chunks(backend, source, paths["huge.md"])) >= 8


def test_ingest_default_source_name_and_idempotent(celery_client, worker, backend, tmp_path):
    from app.workers.tasks import task_file_ingestion

    worker()
    doc = tmp_path / f"doc-{uuid.uuid4().hex[:6]}.txt"
    doc.write_text(_prose(5000, 5), encoding="utf-8")
    assert task_file_ingestion.delay([str(doc)]).get(timeout=GET_TIMEOUT) is True
    assert str(doc) in _files(backend, "documents")
    first = _chunks(backend, "documents", str(doc))
    assert len(first) == 2 and _rebuild([c["text"] for c in first]) == doc.read_text(encoding="utf-8")
    # Ingesting the same file again replaces its chunks (at-least-once delivery safe).
    assert task_file_ingestion.delay([str(doc)]).get(timeout=GET_TIMEOUT) is True
    assert _chunks(backend, "documents", str(doc)) == first


def test_ingest_fixture_text_markdown_html(celery_client, worker, backend):
    from app.workers.tasks import task_file_ingestion

    worker()
    txt, md, html = _fixture("sample.txt"), _fixture("sample.md"), _fixture("sample.html")
    source = _source()
    res = task_file_ingestion.delay([txt, md, html], source_name=source)
    assert res.get(timeout=GET_TIMEOUT) is True
    assert _files(backend, source) == {txt, md, html}

    for path in (txt, md):
        with open(path, encoding="utf-8") as fh:
            content = fh.read()
        texts = [c["text"] for c in _chunks(backend, source, path)]
        _check_chunking(texts, len(content))
        assert _rebuild(texts) == content

    html_texts = [c["text"] for c in _chunks(backend, source, html)]
    assert html_texts, "no chunks for the HTML file"
    html_text = _rebuild(html_texts)
    _check_chunking(html_texts, len(html_text))
    # Visible text only: <head> (title), <style>, <script>, comments dropped; entities
    # decoded. Compared with whitespace normalised (block elements may become line
    # breaks).
    assert " ".join(html_text.split()) == (
        "Sample Heading Fish & chips cost <5> \"coins\" 'each'. One Two AB Line one Line two")
    for hidden in ("Head title", "color", "comment", "hidden", "not text", "&amp;", "&nbsp;"):
        assert hidden not in html_text, hidden


@pytest.mark.rust_only  # the Python twin has no PDF text extractor
@pytest.mark.rust_native
def test_ingest_fixture_pdf(celery_client, worker, backend):
    from app.workers.tasks import task_file_ingestion

    worker()
    pdf = _fixture("sample.pdf")
    source = _source()
    assert task_file_ingestion.delay([pdf], source_name=source).get(timeout=GET_TIMEOUT) is True
    assert _files(backend, source) == {pdf}
    texts = [c["text"] for c in _chunks(backend, source, pdf)]
    assert texts
    flat = " ".join(_rebuild(texts).split())
    assert "The quick brown fox ingests PDF documents." in flat
    assert "A second page holds another sentence." in flat
    assert flat.index("quick brown fox") < flat.index("second page")


@pytest.mark.rust_only
@pytest.mark.rust_native
def test_ingest_all_fixture_types_together(celery_client, worker, backend):
    from app.workers.tasks import task_file_ingestion

    worker()
    paths = [_fixture(f"sample.{ext}") for ext in ("txt", "md", "html", "pdf")]
    source = _source()
    assert task_file_ingestion.delay(paths, source).get(timeout=GET_TIMEOUT) is True
    assert _files(backend, source) == set(paths)
    for p in paths:
        assert _chunks(backend, source, p), p


def test_ingest_missing_file_is_file_not_found(celery_client, worker, backend, tmp_path):
    from app.workers.tasks import task_file_ingestion

    worker()
    missing = str(tmp_path / "no-such-dir" / "missing.txt")
    res = task_file_ingestion.delay([missing], source_name=_source())
    with pytest.raises(FileNotFoundError) as excinfo:
        res.get(timeout=GET_TIMEOUT)
    assert missing in str(excinfo.value)
    assert res.status == "FAILURE"
