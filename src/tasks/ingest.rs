//! Text extraction and chunking for `app.workers.tasks.task_file_ingestion`.
//!
//! Pure and synchronous: this module only reads the file it is given; the task
//! wrapper decides where the [`Chunk`]s go. Failures are [`TaskError`]s shaped
//! like the exception the Python task would raise, so callers of
//! `AsyncResult.get()` see `FileNotFoundError`, `IngestionError`, ...

use crate::task::TaskError;
use serde_json::json;
use std::path::Path;

/// A piece of a document ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub file: String,
    pub index: usize,
    pub text: String,
}

/// Chunk length in characters (Unicode scalar values), not bytes, so the
/// limit means the same for English and CJK text.
pub const DEFAULT_CHUNK_SIZE: usize = 4000;
/// Characters repeated between neighbouring chunks, so a sentence cut at a
/// boundary is still whole in one of them.
pub const DEFAULT_CHUNK_OVERLAP: usize = 400;

/// Extensions read as UTF-8 text unchanged (Markdown is already text).
const TEXT_EXTENSIONS: &[&str] = &["txt", "text", "log", "csv", "rst", "json", "md", "markdown"];

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads a file and returns its plain text, choosing the reader by extension
/// (case-insensitive):
///
/// * `.txt .text .log .csv .rst .json .md .markdown` — UTF-8, invalid bytes
///   replaced with U+FFFD (a stray Latin-1 byte should not lose a document);
/// * `.html .htm` — visible text: `<head>`, scripts, styles and comments
///   dropped, block elements turned into line breaks, entities decoded;
/// * `.pdf` — text via `pdf-extract`;
/// * anything else — UTF-8 text if it decodes, else `IngestionError`.
///
/// A leading UTF-8 byte-order mark is dropped from text formats.
pub fn extract_text(path: &Path) -> Result<String, TaskError> {
    let name = path.to_string_lossy();
    let bytes = std::fs::read(path).map_err(|e| TaskError::from_io(&e, &name))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let body = bytes.strip_prefix(UTF8_BOM).unwrap_or(&bytes);
    match ext.as_str() {
        "pdf" => pdf_to_text(&bytes).map_err(|reason| ingestion_error(&name, &reason)),
        "html" | "htm" => Ok(html_to_text(&String::from_utf8_lossy(body))),
        e if TEXT_EXTENSIONS.contains(&e) => Ok(String::from_utf8_lossy(body).into_owned()),
        _ => std::str::from_utf8(body)
            .map(str::to_owned)
            .map_err(|_| ingestion_error(&name, "unsupported file type (not UTF-8 text)")),
    }
}

/// Splits text into chunks of at most `size` characters where consecutive
/// chunks overlap by `overlap` characters, so chunk `i` starts at
/// `i * (size - overlap)`.
///
/// A chunk prefers to end just before whitespace found in the last 10% of its
/// window, so words are not cut; the next chunk then starts `overlap`
/// characters before that end. Chunks are never empty; chunks that would be
/// all whitespace are dropped, so blank text gives an empty `Vec`.
///
/// # Panics
/// If `overlap >= size`: the chunker could not move forward.
pub fn chunk_text(text: &str, size: usize, overlap: usize) -> Vec<String> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    // Byte offset of character position `k`; slicing there never splits a character.
    let byte_at = |k: usize| chars.get(k).map_or(text.len(), |&(b, _)| b);
    chunk_spans(&chars, size, overlap)
        .into_iter()
        .map(|(start, end)| &text[byte_at(start)..byte_at(end)])
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// [`extract_text`] + [`chunk_text`] with the defaults, tagging each chunk
/// with its file (as given) and position.
pub fn ingest_file(path: &Path) -> Result<Vec<Chunk>, TaskError> {
    let text = extract_text(path)?;
    let file = path.to_string_lossy().into_owned();
    Ok(chunk_text(&text, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_OVERLAP)
        .into_iter()
        .enumerate()
        .map(|(index, text)| Chunk {
            file: file.clone(),
            index,
            text,
        })
        .collect())
}

/// The example app's `IngestionError(message)` from `app/workers/tasks.py`.
fn ingestion_error(path: &str, reason: &str) -> TaskError {
    TaskError::new(
        "IngestionError",
        "app.workers.tasks",
        vec![json!(format!("cannot read {path}: {reason}"))],
    )
}

/// Character ranges `[start, end)` of each chunk, blank ones included, so the
/// size/overlap arithmetic can be tested on its own.
fn chunk_spans(chars: &[(usize, char)], size: usize, overlap: usize) -> Vec<(usize, usize)> {
    assert!(
        overlap < size,
        "chunk overlap ({overlap}) must be smaller than chunk size ({size})"
    );
    let n = chars.len();
    let lookback = size / 10;
    let mut spans = Vec::new();
    let mut start = 0;
    while start < n {
        let mut end = (start + size).min(n);
        if end < n {
            // Cut before whitespace near the end of the window, as long as the
            // next chunk (which starts `overlap` earlier) still moves forward.
            if let Some(p) = (end - lookback..=end)
                .rev()
                .find(|&p| chars[p].1.is_whitespace() && p > start + overlap)
            {
                end = p;
            }
        }
        spans.push((start, end));
        if end == n {
            break;
        }
        start = end - overlap;
    }
    spans
}

/// Runs `pdf-extract` on the file's bytes. The crate panics on some malformed
/// input; a bad upload must fail its task, not take down the worker thread.
fn pdf_to_text(bytes: &[u8]) -> Result<String, String> {
    match std::panic::catch_unwind(|| pdf_pages(bytes)) {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(format!("invalid PDF: {e}")),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown error".into());
            Err(format!("invalid PDF: pdf-extract panicked: {msg}"))
        }
    }
}

/// Text of every page, pages separated by a blank line.
///
/// Done page by page because `pdf_extract::extract_text` only breaks lines on
/// vertical movement: two pages whose text starts at the same height run
/// together ("...documents.A second page..."). Its own `*_by_pages` helpers
/// stop silently at the first failing page, which would truncate documents.
fn pdf_pages(bytes: &[u8]) -> Result<String, pdf_extract::OutputError> {
    let mut doc = pdf_extract::Document::load_mem(bytes)?;
    if doc.is_encrypted() {
        // Like pdf-extract: PDFs with only an owner password open with "".
        doc.decrypt("")?;
    }
    let mut pages = Vec::new();
    for page_num in doc.get_pages().into_keys() {
        let mut text = String::new();
        let mut out = pdf_extract::PlainTextOutput::new(&mut text);
        pdf_extract::output_doc_page(&doc, &mut out, page_num)?;
        let text = text.trim();
        if !text.is_empty() {
            pages.push(text.to_owned());
        }
    }
    Ok(pages.join("\n\n"))
}

/// Visible text of an HTML document, for indexing rather than display.
///
/// Drops comments, declarations and the contents of `<head>`, `<script>`,
/// `<style>` and `<template>`; block elements become line breaks (paragraph-like
/// ones a blank line); entities are decoded; other whitespace runs collapse to
/// one space. A `<` not starting a tag (`a < b`) is kept as text, as browsers do.
fn html_to_text(html: &str) -> String {
    // ASCII lowercasing keeps every byte offset, so `lower` indexes `html`.
    let lower = html.to_ascii_lowercase();
    let find = |from: usize, pat: &str| lower[from..].find(pat).map(|j| from + j);
    let mut out = TextOut::default();
    let mut i = 0;
    while i < html.len() {
        let rest = &html[i..];
        if rest.starts_with("<!--") {
            i = find(i + 4, "-->").map_or(html.len(), |j| j + 3);
        } else if let Some(tag) = parse_tag(&lower, i) {
            i = tag.end;
            if tag.closing {
                out.block(break_weight(tag.name));
                continue;
            }
            match tag.name {
                "script" | "style" | "template" => {
                    // Raw text: skip to the matching close tag (or the end).
                    let close = find(i, &format!("</{}", tag.name));
                    i = close.map_or(html.len(), |c| find(c, ">").map_or(html.len(), |g| g + 1));
                }
                "head" => {
                    // `</head>` is optional: stop at `<body` too, and drop nothing
                    // if neither is there rather than losing the whole page.
                    let body = find(i, "<body");
                    match find(i, "</head") {
                        Some(c) if body.is_none_or(|b| c < b) => {
                            i = find(c, ">").map_or(html.len(), |g| g + 1);
                        }
                        _ => i = body.unwrap_or(i),
                    }
                }
                "br" => out.line_break(),
                "td" | "th" => out.push(' '),
                name => out.block(break_weight(name)),
            }
        } else if rest.starts_with('&') {
            let (c, len) = decode_entity(rest);
            out.push(c);
            i += len;
        } else if let Some(c) = rest.chars().next() {
            out.push(c);
            i += c.len_utf8();
        }
    }
    out.text
}

/// How far apart a block element sets its neighbours: 2 = blank line, 1 = new line.
fn break_weight(name: &str) -> u8 {
    match name {
        "p" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "blockquote" | "pre" | "hr" | "table"
        | "ul" | "ol" | "dl" => 2,
        "div" | "li" | "tr" | "dt" | "dd" | "section" | "article" | "header" | "footer" | "nav"
        | "aside" | "main" | "form" | "fieldset" | "figure" | "figcaption" | "address"
        | "details" | "summary" | "title" | "caption" | "body" | "html" => 1,
        _ => 0,
    }
}

/// A tag found at some `<`: its lowercased name ("" for `<!DOCTYPE>`, `<?xml>`)
/// and the byte just past its `>`.
struct Tag<'a> {
    name: &'a str,
    closing: bool,
    end: usize,
}

/// Parses the tag starting at `lower[start] == '<'`, or `None` if that `<`
/// is plain text. `>` inside quoted attribute values does not end the tag.
fn parse_tag(lower: &str, start: usize) -> Option<Tag<'_>> {
    let bytes = lower.as_bytes();
    if bytes.get(start) != Some(&b'<') {
        return None;
    }
    let mut j = start + 1;
    let closing = bytes.get(j) == Some(&b'/');
    if closing {
        j += 1;
    }
    let first = *bytes.get(j)?;
    if !(first.is_ascii_alphabetic() || (!closing && matches!(first, b'!' | b'?'))) {
        return None;
    }
    let name_start = j;
    while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'-') {
        j += 1;
    }
    let name = &lower[name_start..j];
    let (mut quote, mut last) = (None, 0u8);
    while j < bytes.len() {
        let b = bytes[j];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'>' => break,
            // Quotes only open an attribute value (`name="..."`).
            None if matches!(b, b'"' | b'\'') && last == b'=' => quote = Some(b),
            None => {}
        }
        if !b.is_ascii_whitespace() {
            last = b;
        }
        j += 1;
    }
    // An unterminated tag runs to the end of input and is dropped, as in browsers.
    Some(Tag {
        name,
        closing,
        end: (j + 1).min(bytes.len()),
    })
}

/// Decodes the entity at the start of `s` (which begins with `&`), returning
/// the character and the bytes consumed; an unknown entity is a literal `&`.
fn decode_entity(s: &str) -> (char, usize) {
    let Some(semi) = s.bytes().take(12).position(|b| b == b';') else {
        return ('&', 1);
    };
    let c = match &s[1..semi] {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some('\u{a0}'),
        body => body.strip_prefix('#').and_then(|num| {
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse::<u32>().ok()?,
            };
            // Like browsers: a number that is no character becomes U+FFFD.
            Some(
                char::from_u32(code)
                    .filter(|&c| c != '\0')
                    .unwrap_or('\u{fffd}'),
            )
        }),
    };
    c.map_or(('&', 1), |c| (c, semi + 1))
}

/// Collects text, turning whitespace and block boundaries into at most one
/// separator, emitted lazily before the next visible character so the result
/// has no leading or trailing whitespace.
#[derive(Default)]
struct TextOut {
    text: String,
    space: bool,
    breaks: u8,
}

impl TextOut {
    fn push(&mut self, c: char) {
        // `is_whitespace` covers U+00A0, so `&nbsp;` collapses like a space.
        if c.is_whitespace() {
            self.space = true;
            return;
        }
        if !self.text.is_empty() {
            match self.breaks {
                0 if self.space => self.text.push(' '),
                n => (0..n).for_each(|_| self.text.push('\n')),
            }
        }
        (self.space, self.breaks) = (false, 0);
        self.text.push(c);
    }

    fn block(&mut self, weight: u8) {
        self.breaks = self.breaks.max(weight);
    }

    /// `<br>` adds up: `<br><br>` is a blank line.
    fn line_break(&mut self) {
        self.breaks = (self.breaks + 1).min(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "rcw-ingest-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ingest")
            .join(name)
    }

    fn html(s: &str) -> String {
        html_to_text(s)
    }

    // ---- extraction from files ----

    #[test]
    fn reads_txt_fixture_verbatim() {
        let path = fixture("sample.txt");
        let text = extract_text(&path).unwrap();
        assert_eq!(text, fs::read_to_string(&path).unwrap());
        assert!(text.contains("café, naïve, 日本語"));
    }

    #[test]
    fn reads_markdown_fixture_as_is() {
        let path = fixture("sample.md");
        let text = extract_text(&path).unwrap();
        assert_eq!(text, fs::read_to_string(&path).unwrap());
        assert!(text.starts_with("# Ingestion sample"));
        assert!(text.contains("**as-is**"));
    }

    #[test]
    fn strips_html_fixture() {
        let text = extract_text(&fixture("sample.html")).unwrap();
        assert_eq!(
            text,
            "Sample Heading\n\n\
             Fish & chips cost <5> \"coins\" 'each'.\n\n\
             One\nTwo AB\n\n\
             Line one\nLine two"
        );
    }

    #[test]
    fn reads_both_pages_of_pdf_fixture_separately() {
        let text = extract_text(&fixture("sample.pdf")).unwrap();
        assert_eq!(
            text,
            "The quick brown fox ingests PDF documents.\n\nA second page holds another sentence."
        );
    }

    #[test]
    fn ingest_file_tags_chunks_with_file_and_index() {
        let path = fixture("sample.pdf");
        let chunks = ingest_file(&path).unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].file, path.to_string_lossy());
        assert_eq!(chunks[0].index, 0);
        assert!(chunks[0].text.contains("quick brown fox"));

        let dir = TempDir::new();
        let words: String = (0..3000).map(|i| format!("word{i} ")).collect();
        let path = dir.write("long.txt", &words);
        let chunks = ingest_file(&path).unwrap();
        assert!(chunks.len() > 1);
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!((c.index, c.file.as_str()), (i, &*path.to_string_lossy()));
            assert!(c.text.chars().count() <= DEFAULT_CHUNK_SIZE);
        }
        assert!(chunks[0].text.starts_with("word0 word1 "));
        assert!(chunks.last().unwrap().text.ends_with("word2999 "));
    }

    #[test]
    fn temp_files_txt_md_html() {
        let dir = TempDir::new();
        let txt = dir.write("a.txt", "hello\nworld\n");
        assert_eq!(extract_text(&txt).unwrap(), "hello\nworld\n");
        let md = dir.write("b.markdown", "# T\n\n*x* <b>kept</b>\n");
        assert_eq!(extract_text(&md).unwrap(), "# T\n\n*x* <b>kept</b>\n");
        let page = dir.write(
            "c.htm",
            "<html><head><script>x()</script></head><body>\
             <style>p{}</style><p>a&amp;b</p><script>if (a < b) {}</script></body></html>",
        );
        assert_eq!(extract_text(&page).unwrap(), "a&b");
    }

    #[test]
    fn extension_is_case_insensitive_and_text_is_lossy() {
        let dir = TempDir::new();
        let txt = dir.write("NOTES.TXT", b"ok \xff end");
        assert_eq!(extract_text(&txt).unwrap(), "ok \u{fffd} end");
        let page = dir.write("PAGE.HTML", "<P>Hi</P>");
        assert_eq!(extract_text(&page).unwrap(), "Hi");
    }

    #[test]
    fn byte_order_mark_is_dropped() {
        let dir = TempDir::new();
        let txt = dir.write("bom.txt", b"\xEF\xBB\xBFtext");
        assert_eq!(extract_text(&txt).unwrap(), "text");
        let page = dir.write("bom.html", b"\xEF\xBB\xBF<p>x</p>");
        assert_eq!(extract_text(&page).unwrap(), "x");
    }

    #[test]
    fn unknown_or_missing_extension_reads_utf8() {
        let dir = TempDir::new();
        let plain = dir.write("README", "no extension");
        assert_eq!(extract_text(&plain).unwrap(), "no extension");
        let conf = dir.write("settings.yaml", "key: välue");
        assert_eq!(extract_text(&conf).unwrap(), "key: välue");
    }

    #[test]
    fn binary_with_unknown_extension_is_ingestion_error() {
        let dir = TempDir::new();
        let path = dir.write("blob.bin", [0x89, b'P', b'N', b'G', 0xff, 0x00, 0x80]);
        let err = extract_text(&path).unwrap_err();
        assert_eq!(err.exc_type, "IngestionError");
        assert_eq!(err.exc_module, "app.workers.tasks");
        assert_eq!(
            err.exc_message,
            vec![json!(format!(
                "cannot read {}: unsupported file type (not UTF-8 text)",
                path.display()
            ))]
        );
    }

    #[test]
    fn corrupt_pdf_is_ingestion_error() {
        let dir = TempDir::new();
        for (name, bytes) in [
            ("junk.pdf", b"this is not a pdf".as_slice()),
            (
                "truncated.pdf",
                &fs::read(fixture("sample.pdf")).unwrap()[..200],
            ),
        ] {
            let path = dir.write(name, bytes);
            let err = extract_text(&path).unwrap_err();
            assert_eq!(err.exc_type, "IngestionError", "{name}");
            let msg = err.exc_message[0].as_str().unwrap();
            let prefix = format!("cannot read {}: invalid PDF: ", path.display());
            assert!(msg.starts_with(&prefix), "{msg}");
        }
    }

    #[test]
    fn pdf_extract_panic_is_ingestion_error() {
        // Same length as the fixture, so the xref offsets stay valid, but the
        // page now uses an undefined font, on which pdf-extract panics.
        let pdf = fs::read(fixture("sample.pdf")).unwrap();
        let at = pdf.windows(9).position(|w| w == b"/F1 12 Tf").unwrap();
        let mut bad = pdf.clone();
        bad[at + 2] = b'9';
        let dir = TempDir::new();
        let path = dir.write("badfont.pdf", bad);
        let err = extract_text(&path).unwrap_err();
        assert_eq!(err.exc_type, "IngestionError");
        assert_eq!(
            err.exc_message,
            vec![json!(format!(
                "cannot read {}: invalid PDF: pdf-extract panicked: F9",
                path.display()
            ))]
        );
    }

    #[test]
    fn missing_file_is_file_not_found_error() {
        let dir = TempDir::new();
        let path = dir.0.join("nope.txt");
        let err = extract_text(&path).unwrap_err();
        assert_eq!(err.exc_type, "FileNotFoundError");
        assert_eq!(err.exc_module, "builtins");
        assert_eq!(
            err.exc_message,
            vec![
                json!(2),
                json!("No such file or directory"),
                json!(path.to_string_lossy())
            ]
        );
        assert_eq!(ingest_file(&path).unwrap_err(), err);
    }

    #[test]
    fn directory_is_is_a_directory_error() {
        let dir = TempDir::new();
        let sub = dir.0.join("folder.txt");
        fs::create_dir(&sub).unwrap();
        let err = extract_text(&sub).unwrap_err();
        assert_eq!(err.exc_type, "IsADirectoryError");
        assert_eq!(
            err.exc_message,
            vec![
                json!(21),
                json!("Is a directory"),
                json!(sub.to_string_lossy())
            ]
        );
    }

    #[test]
    fn unreadable_file_is_permission_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        let path = dir.write("secret.txt", "classified");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
        let result = extract_text(&path);
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // Root ignores file modes, so there is no error to observe.
            assert_eq!(result.unwrap(), "classified");
            return;
        }
        let err = result.unwrap_err();
        assert_eq!(err.exc_type, "PermissionError");
        assert_eq!(
            err.exc_message,
            vec![
                json!(13),
                json!("Permission denied"),
                json!(path.to_string_lossy())
            ]
        );
    }

    // ---- HTML stripping ----

    #[test]
    fn html_decodes_entities() {
        assert_eq!(
            html("&lt;b&gt; &amp;amp; &quot;q&quot; &#39;s&#39; &apos;"),
            "<b> &amp; \"q\" 's' '"
        );
        assert_eq!(html("&#65;&#x42;&#X43;&#233;&#x1F600;"), "ABCé😀");
        assert_eq!(
            html("bad:&#xD800;&#0;&#99999999;"),
            "bad:\u{fffd}\u{fffd}\u{fffd}"
        );
        assert_eq!(html("AT&T &unknown; & x &amp"), "AT&T &unknown; & x &amp");
        // An escaped tag is text, not markup.
        assert_eq!(
            html("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "<script>alert(1)</script>"
        );
        assert_eq!(html("a&nbsp;&nbsp;b"), "a b");
    }

    #[test]
    fn html_drops_hidden_content() {
        assert_eq!(html("a<!-- <p>hidden</p> -->b<!-- unterminated"), "ab");
        assert_eq!(
            html("<SCRIPT>var s = '</p>';</SCRIPT>x<Style>.a{}</STYLE>y"),
            "xy"
        );
        assert_eq!(html("x<script>never closed <p>still script"), "x");
        assert_eq!(html("<!DOCTYPE html><?xml version='1.0'?>text"), "text");
        assert_eq!(html("<template><p>t</p></template>shown"), "shown");
    }

    #[test]
    fn html_head_without_close_stops_at_body() {
        assert_eq!(html("<head><title>T</title><body>Body</body>"), "Body");
        assert_eq!(html("<head><title>T</title></head>Body"), "Body");
        // No end in sight: keep the text rather than drop the page.
        assert_eq!(html("<head><p>only</p>"), "only");
    }

    #[test]
    fn html_blocks_become_newlines() {
        assert_eq!(html("<p>one</p><p>two</p>"), "one\n\ntwo");
        assert_eq!(html("<div>a</div><div>b</div>"), "a\nb");
        assert_eq!(html("a<br>b<br/>c<BR /><br>d"), "a\nb\nc\n\nd");
        assert_eq!(
            html("<ul>\n <li>x</li>\n <li>y</li>\n</ul>after"),
            "x\ny\n\nafter"
        );
        assert_eq!(html("<h2>T</h2>body"), "T\n\nbody");
        assert_eq!(
            html("<table><tr><th>k</th><th>v</th></tr><tr><td>1</td><td>2</td></tr></table>"),
            "k v\n1 2"
        );
    }

    #[test]
    fn html_inline_tags_and_whitespace() {
        assert_eq!(
            html("  foo<b>bar</b> <i>baz</i>\n\t qux  "),
            "foobar baz qux"
        );
        assert_eq!(html("<a href=\"x?a>b\" title='it>s'>link</a>"), "link");
        assert_eq!(html("<p class=it's>x</p>"), "x");
        assert_eq!(html("1 < 2 and 3 <= 4, a <> b"), "1 < 2 and 3 <= 4, a <> b");
        assert_eq!(html("<p>café 日本</p>"), "café 日本");
        assert_eq!(html("text <unterminated"), "text");
        assert_eq!(html(""), "");
    }

    // ---- chunking ----

    fn spans(text: &str, size: usize, overlap: usize) -> Vec<(usize, usize)> {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        chunk_spans(&chars, size, overlap)
    }

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(chunk_text("hello world", 100, 10), vec!["hello world"]);
        assert_eq!(chunk_text("exactly10!", 10, 3), vec!["exactly10!"]);
    }

    #[test]
    fn blank_text_has_no_chunks() {
        assert!(chunk_text("", 10, 2).is_empty());
        assert!(chunk_text(" \n\t  \u{a0}", 10, 2).is_empty());
        assert!(chunk_text(&" ".repeat(50), 10, 2).is_empty());
    }

    #[test]
    fn hard_cuts_follow_size_minus_overlap() {
        let text: String = ('a'..='z').collect();
        // Starts at 0, 8, 16; the last chunk ends exactly at the text's end.
        assert_eq!(spans(&text, 10, 2), vec![(0, 10), (8, 18), (16, 26)]);
        assert_eq!(
            chunk_text(&text, 10, 2),
            vec!["abcdefghij", "ijklmnopqr", "qrstuvwxyz"]
        );
        // Exact fits: nothing extra after the chunk that reaches the end.
        assert_eq!(spans(&text[..18], 10, 2), vec![(0, 10), (8, 18)]);
        assert_eq!(spans(&text[..20], 10, 0), vec![(0, 10), (10, 20)]);
        assert_eq!(spans(&text[..11], 10, 2), vec![(0, 10), (8, 11)]);
        // With overlap = size - 1 the window slides one character at a time.
        assert_eq!(spans("abcd", 2, 1), vec![(0, 2), (1, 3), (2, 4)]);
    }

    #[test]
    fn neighbours_share_exactly_the_overlap() {
        let text: String = (0..500)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let chunks = chunk_text(&text, 60, 15);
        for pair in chunks.windows(2) {
            assert_eq!(pair[0][pair[0].len() - 15..], pair[1][..15]);
        }
        let rebuilt: String =
            chunks[0].clone() + &chunks[1..].iter().map(|c| &c[15..]).collect::<String>();
        assert_eq!(rebuilt, text);
    }

    #[test]
    fn prefers_whitespace_in_last_tenth() {
        // size 20 → look back 2 chars: a space at 18 is used...
        let text = format!("{} {}", "a".repeat(18), "b".repeat(30));
        assert_eq!(spans(&text, 20, 5)[..2], [(0, 18), (13, 33)]);
        assert_eq!(chunk_text(&text, 20, 5)[0], "a".repeat(18));
        // ...a space at 17 is too early, so the cut is hard.
        let text = format!("{} {}", "a".repeat(17), "b".repeat(30));
        assert_eq!(spans(&text, 20, 5)[0], (0, 20));
        // A space right at the window's end is a natural boundary.
        let text = format!("{} {}", "a".repeat(20), "b".repeat(30));
        assert_eq!(spans(&text, 20, 5)[0], (0, 20));
    }

    #[test]
    fn word_boundaries_with_default_sizes() {
        let words: String = (0..2000).map(|i| format!("w{i:04} ")).collect();
        let chunks = chunk_text(&words, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_OVERLAP);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.chars().count() <= DEFAULT_CHUNK_SIZE);
            assert!(
                c.ends_with(|ch: char| ch.is_ascii_digit()),
                "cut mid-word: {:?}",
                &c[c.len() - 10..]
            );
        }
        for pair in chunks.windows(2) {
            // ASCII text, so byte slicing is character slicing here.
            let n = DEFAULT_CHUNK_OVERLAP;
            assert_eq!(pair[0][pair[0].len() - n..], pair[1][..n]);
        }
    }

    #[test]
    fn counts_characters_not_bytes() {
        let text = "é😀日".repeat(10); // 30 chars, 90 bytes
        let chunks = chunk_text(&text, 7, 2);
        assert_eq!(chunks[0], "é😀日é😀日é");
        assert_eq!(chunks[1], "日é😀日é😀日");
        for c in &chunks {
            assert!(c.chars().count() <= 7);
        }
        let rebuilt: String = chunks[0].clone()
            + &chunks[1..]
                .iter()
                .map(|c| c.chars().skip(2).collect::<String>())
                .collect::<String>();
        assert_eq!(rebuilt, text);
    }

    #[test]
    #[should_panic(expected = "must be smaller than chunk size")]
    fn overlap_not_below_size_panics() {
        chunk_text("abc", 5, 5);
    }

    #[test]
    #[should_panic(expected = "must be smaller than chunk size")]
    fn zero_size_panics() {
        chunk_text("abc", 0, 0);
    }

    proptest! {
        #[test]
        fn spans_tile_the_text(
            text in "[ab é😀\n]{0,120}",
            (size, overlap) in (1usize..30).prop_flat_map(|s| (Just(s), 0..s)),
        ) {
            let n = text.chars().count();
            let sp = spans(&text, size, overlap);
            prop_assert_eq!(sp.is_empty(), n == 0);
            if let (Some(first), Some(last)) = (sp.first(), sp.last()) {
                prop_assert_eq!(first.0, 0);
                prop_assert_eq!(last.1, n);
            }
            for &(a, b) in &sp {
                prop_assert!(a < b && b - a <= size);
            }
            for w in sp.windows(2) {
                prop_assert_eq!(w[1].0, w[0].1 - overlap);
                prop_assert!(w[1].0 > w[0].0);
            }
            for c in chunk_text(&text, size, overlap) {
                prop_assert!(!c.trim().is_empty());
                prop_assert!(c.chars().count() <= size);
                prop_assert!(text.contains(&c));
            }
        }
    }
}
