//! A streaming `multipart/form-data` parser (RFC 7578 over RFC 2046), as a pure state machine: bytes go in as they
//! arrive (`push`), events come out (`next_event`): a part's headers, its data in pieces, its end, the end of the
//! form. No I/O and no async, so it is unit-tested and fuzzed (`fuzz/fuzz_targets/multipart.rs`) on its own.
//!
//! It exists because the parser behind axum's `Multipart` (multer) buffers a part's headers until it finds their
//! end, however long they are: a 200 MB part header was held whole in memory. Here everything the parser holds is
//! bounded: a part's headers (`Limits::part_headers`), the preamble before the first boundary (`Limits::preamble`),
//! and part data, which leaves as soon as it cannot be the start of a boundary. What the caller pushes between two
//! calls to `next_event` is the only other thing in its buffer.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// What the parser may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The headers of one part, from the end of its boundary line to the blank line that ends them.
    pub part_headers: usize,
    /// Bytes before the first boundary (RFC 2046 lets a client send a preamble; none of ours does).
    pub preamble: usize,
}

/// The headers of one part that matter here, from its `Content-Disposition: form-data; name="…"; filename="…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHeaders {
    pub name: Option<String>,
    pub filename: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A part begins.
    Part(PartHeaders),
    /// The next piece of the current part's data (never empty).
    Data(Bytes),
    /// The current part ended.
    PartEnd,
    /// The closing boundary: the form is complete. Anything after it (the epilogue) is not read.
    End,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("the Content-Type has no usable boundary (send multipart/form-data; boundary=…, 1 to 70 characters)")]
    Boundary,
    #[error("more than {limit} bytes before the first boundary of the form")]
    PreambleTooLong { limit: usize },
    #[error("a part's headers are over the {limit}-byte limit for part headers")]
    HeadersTooLong { limit: usize },
    #[error("a part's headers are malformed: {0}")]
    BadHeaders(String),
    #[error("the form ended before its closing boundary")]
    Truncated,
}

impl MultipartError {
    /// A limit was passed (as opposed to a form that is malformed).
    pub fn is_limit(&self) -> bool {
        matches!(self, MultipartError::PreambleTooLong { .. } | MultipartError::HeadersTooLong { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for the first delimiter; `discarded` bytes of preamble so far.
    Preamble {
        discarded: usize,
    },
    /// Just past `--boundary`: either `--` (the end) or padding, CRLF and a part's headers follow.
    AfterDelimiter,
    /// Reading a part's headers; the first `scanned` bytes hold no CRLF CRLF.
    Headers {
        scanned: usize,
    },
    /// Reading a part's data.
    Data,
    /// The delimiter that ends the current part is at the start of the buffer.
    DataEnd,
    Done,
}

pub struct Parser {
    /// `\r\n--BOUNDARY`: every delimiter, the first one included (the buffer starts with a CRLF of our own).
    delimiter: Vec<u8>,
    buffer: BytesMut,
    state: State,
    input_ended: bool,
    limits: Limits,
}

const CRLF_CRLF: &[u8] = b"\r\n\r\n";

/// The boundary of a `multipart/form-data` Content-Type value.
pub fn boundary(content_type: &str) -> Result<&str, MultipartError> {
    let mut params = content_type.split(';');
    let kind = params.next().unwrap_or_default().trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::Boundary);
    }
    let boundary = params
        .filter_map(|param| param.split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| {
            let value = value.trim();
            value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value)
        })
        .ok_or(MultipartError::Boundary)?;
    // RFC 2046: 1 to 70 characters, from a small set; a space may not end it.
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
    if boundary.is_empty() || boundary.len() > 70 || boundary.ends_with(' ') || !boundary.bytes().all(allowed) {
        return Err(MultipartError::Boundary);
    }
    Ok(boundary)
}

impl Parser {
    pub fn new(boundary: &str, limits: Limits) -> Parser {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        let mut buffer = BytesMut::with_capacity(8 * 1024);
        // The first delimiter may open the body without the CRLF that precedes every later one.
        buffer.extend_from_slice(b"\r\n");
        Parser { delimiter, buffer, state: State::Preamble { discarded: 0 }, input_ended: false, limits }
    }

    /// The next bytes of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.state != State::Done {
            self.buffer.extend_from_slice(chunk);
        }
    }

    /// The body has ended.
    pub fn end_input(&mut self) {
        self.input_ended = true;
    }

    /// Bytes held now (for the tests and the fuzz target, which check the bound).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next event; `Ok(None)` when more input is needed first.
    pub fn next_event(&mut self) -> Result<Option<Event>, MultipartError> {
        loop {
            match self.state {
                State::Preamble { discarded } => match self.find_delimiter() {
                    Some(at) => {
                        if discarded + at > self.limits.preamble + 2 {
                            return Err(MultipartError::PreambleTooLong { limit: self.limits.preamble });
                        }
                        let _ = self.buffer.split_to(at + self.delimiter.len());
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        let dropped = self.keep_possible_delimiter_start();
                        let discarded = discarded + dropped;
                        if discarded > self.limits.preamble + 2 {
                            return Err(MultipartError::PreambleTooLong { limit: self.limits.preamble });
                        }
                        self.state = State::Preamble { discarded };
                        return self.need_more();
                    }
                },
                State::AfterDelimiter => {
                    if self.buffer.len() < 2 {
                        return self.need_more();
                    }
                    if self.buffer.starts_with(b"--") {
                        self.state = State::Done;
                        self.buffer = BytesMut::new();
                        return Ok(Some(Event::End));
                    }
                    self.state = State::Headers { scanned: 0 };
                }
                State::Headers { scanned } => {
                    let window = self.buffer.len().min(self.limits.part_headers + CRLF_CRLF.len());
                    let from = scanned.saturating_sub(CRLF_CRLF.len() - 1).min(window);
                    match memmem::find(&self.buffer[from..window], CRLF_CRLF) {
                        Some(found) => {
                            let end = from + found;
                            let block = self.buffer.split_to(end + CRLF_CRLF.len());
                            let headers = parse_part_headers(&block[..end])?;
                            self.state = State::Data;
                            return Ok(Some(Event::Part(headers)));
                        }
                        None if window >= self.limits.part_headers + CRLF_CRLF.len() => {
                            return Err(MultipartError::HeadersTooLong { limit: self.limits.part_headers });
                        }
                        None => {
                            self.state = State::Headers { scanned: window };
                            return self.need_more();
                        }
                    }
                }
                State::Data => match self.find_delimiter() {
                    Some(0) => self.state = State::DataEnd,
                    Some(at) => {
                        self.state = State::DataEnd;
                        return Ok(Some(Event::Data(self.buffer.split_to(at).freeze())));
                    }
                    None => {
                        let safe = self.buffer.len().saturating_sub(self.delimiter.len() - 1);
                        if safe > 0 {
                            return Ok(Some(Event::Data(self.buffer.split_to(safe).freeze())));
                        }
                        return self.need_more();
                    }
                },
                State::DataEnd => {
                    let _ = self.buffer.split_to(self.delimiter.len());
                    self.state = State::AfterDelimiter;
                    return Ok(Some(Event::PartEnd));
                }
                State::Done => return Ok(Some(Event::End)),
            }
        }
    }

    fn find_delimiter(&self) -> Option<usize> {
        memmem::find(&self.buffer, &self.delimiter)
    }

    /// Drops what cannot be the start of a delimiter; returns how many bytes went.
    fn keep_possible_delimiter_start(&mut self) -> usize {
        let drop = self.buffer.len().saturating_sub(self.delimiter.len() - 1);
        let _ = self.buffer.split_to(drop);
        drop
    }

    fn need_more(&self) -> Result<Option<Event>, MultipartError> {
        if self.input_ended {
            Err(MultipartError::Truncated)
        } else {
            Ok(None)
        }
    }
}

/// The block between a boundary and the blank line: transport padding on the boundary's own line, then header lines.
fn parse_part_headers(block: &[u8]) -> Result<PartHeaders, MultipartError> {
    let bad = |why: &str| MultipartError::BadHeaders(why.to_owned());
    let text = std::str::from_utf8(block).map_err(|_| bad("they are not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let padding = lines.next().unwrap_or_default();
    if !padding.bytes().all(|b| b == b' ' || b == b'\t') {
        return Err(bad("the boundary line goes on after the boundary"));
    }
    let mut headers = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| bad("a header line has no ':'"))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(bad("a header name is empty or holds a space"));
        }
        if name.eq_ignore_ascii_case("content-disposition") {
            if headers.is_some() {
                return Err(bad("two Content-Disposition headers"));
            }
            headers = Some(content_disposition(value.trim())?);
        }
    }
    headers.ok_or_else(|| bad("no Content-Disposition: form-data header"))
}

/// `form-data; name="file"; filename="a.json.gz"`: the name and file name (quoted strings with `\` escapes, or
/// tokens). Other parameters (`filename*` among them) are ignored.
fn content_disposition(value: &str) -> Result<PartHeaders, MultipartError> {
    let bad = |why: &str| MultipartError::BadHeaders(why.to_owned());
    let (kind, mut rest) = value.split_once(';').unwrap_or((value, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(bad("the Content-Disposition is not form-data"));
    }
    let mut headers = PartHeaders { name: None, filename: None };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return Ok(headers);
        }
        let (key, after) = rest.split_once('=').ok_or_else(|| bad("a Content-Disposition parameter has no '='"))?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => quoted_string(quoted).ok_or_else(|| bad("a quoted parameter does not end"))?,
            None => {
                let end = after.find(';').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            }
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "name" => headers.name = Some(value),
            "filename" => headers.filename = Some(value),
            _ => {}
        }
        rest = after;
    }
}

/// The content of a quoted string whose opening quote is gone, and what follows its closing quote.
fn quoted_string(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { part_headers: 8192, preamble: 8192 };

    /// Every event of `body` fed in pieces of `step` bytes, the data of each part joined; or the first error.
    fn parse(body: &[u8], step: usize) -> Result<Vec<Event>, MultipartError> {
        let mut parser = Parser::new("XyZ", LIMITS);
        let mut events: Vec<Event> = Vec::new();
        let mut chunks = body.chunks(step.max(1));
        loop {
            match parser.next_event()? {
                Some(Event::End) => {
                    events.push(Event::End);
                    return Ok(events);
                }
                Some(Event::Data(bytes)) => {
                    assert!(!bytes.is_empty());
                    match events.last_mut() {
                        Some(Event::Data(joined)) => {
                            let mut both = joined.to_vec();
                            both.extend_from_slice(&bytes);
                            *joined = Bytes::from(both);
                        }
                        _ => events.push(Event::Data(bytes)),
                    }
                }
                Some(event) => events.push(event),
                None => match chunks.next() {
                    Some(chunk) => parser.push(chunk),
                    None => parser.end_input(),
                },
            }
            assert!(parser.buffered() <= LIMITS.part_headers + 4 + step.max(1) + 80, "{}", parser.buffered());
        }
    }

    fn part(name: &str, filename: Option<&str>) -> Event {
        Event::Part(PartHeaders { name: Some(name.into()), filename: filename.map(Into::into) })
    }

    fn data(bytes: &[u8]) -> Event {
        Event::Data(Bytes::copy_from_slice(bytes))
    }

    /// The worker's form, byte for byte as its sync manager builds it.
    fn worker_form(content: &[u8]) -> Vec<u8> {
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"subdir\"\r\n\r\nanalysisResults\r\n\
                         --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.json.gz\"\r\n\
                         Content-Type: application/gzip\r\n\r\n"
            .to_vec();
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        body
    }

    #[test]
    fn the_workers_form_in_any_pieces() {
        let content: Vec<u8> = (0..5000u32).map(|n| (n % 251) as u8).chain(*b"\r\n--Xy\r\n-").collect();
        let expected = vec![
            part("subdir", None),
            data(b"analysisResults"),
            Event::PartEnd,
            part("file", Some("a.json.gz")),
            data(&content),
            Event::PartEnd,
            Event::End,
        ];
        for step in [1, 2, 3, 7, 64, 1000, 100_000] {
            assert_eq!(parse(&worker_form(&content), step).unwrap(), expected, "step {step}");
        }
    }

    #[test]
    fn empty_parts_preamble_padding_and_no_headers_but_the_disposition() {
        let body = b"preamble\r\n--XyZ  \r\ncontent-disposition: form-data;name=file;filename=\"q\\\"x\"\r\n\r\n\
                     \r\n--XyZ\r\nContent-Disposition: form-data; name=\"e\"\r\n\r\n\r\n--XyZ--";
        assert_eq!(
            parse(body, 5).unwrap(),
            vec![part("file", Some("q\"x")), Event::PartEnd, part("e", None), Event::PartEnd, Event::End]
        );
    }

    #[test]
    fn headers_over_the_limit_are_refused_before_they_are_held() {
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Pad: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', 100_000));
        assert_eq!(parse(&body, 4096), Err(MultipartError::HeadersTooLong { limit: 8192 }));
        let mut preamble = vec![b'p'; 20_000];
        preamble.extend_from_slice(b"\r\n--XyZ--");
        assert_eq!(parse(&preamble, 512), Err(MultipartError::PreambleTooLong { limit: 8192 }));
    }

    #[test]
    fn malformed_forms_say_what_is_wrong() {
        let cases: [(&[u8], &str); 6] = [
            (b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nabc", "ended before"),
            (b"--XyZ\r\nContent-Type: text/plain\r\n\r\nabc\r\n--XyZ--", "no Content-Disposition"),
            (b"--XyZ\r\nContent-Disposition: attachment\r\n\r\nabc\r\n--XyZ--", "not form-data"),
            (b"--XyZ\r\nno colon here\r\n\r\n\r\n--XyZ--", "no ':'"),
            (b"--XyZjunk\r\nContent-Disposition: form-data\r\n\r\n\r\n--XyZ--", "goes on after"),
            (b"--XyZ\r\nContent-Disposition: form-data; name=\"a\r\n\r\n\r\n--XyZ--", "does not end"),
        ];
        for (body, expected) in cases {
            let error = parse(body, 3).unwrap_err().to_string();
            assert!(error.contains(expected), "{:?}: {error}", String::from_utf8_lossy(body));
        }
        assert_eq!(parse(b"", 1), Err(MultipartError::Truncated));
    }

    #[test]
    fn boundaries_from_the_content_type() {
        assert_eq!(boundary("multipart/form-data; boundary=----SyncBoundary1"), Ok("----SyncBoundary1"));
        assert_eq!(boundary("Multipart/Form-Data;charset=utf-8; BOUNDARY=\"a b\""), Ok("a b"));
        for bad in ["multipart/form-data", "text/plain; boundary=x", "multipart/form-data; boundary=", &"x".repeat(90)]
        {
            assert_eq!(boundary(bad), Err(MultipartError::Boundary), "{bad}");
        }
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "b".repeat(71))),
            Err(MultipartError::Boundary)
        );
    }

    #[test]
    fn after_the_end_nothing_more_is_held() {
        let mut parser = Parser::new("XyZ", LIMITS);
        parser.push(b"--XyZ--\r\nepilogue");
        assert_eq!(parser.next_event(), Ok(Some(Event::End)));
        parser.push(&[0u8; 10_000]);
        assert_eq!(parser.buffered(), 0);
        assert_eq!(parser.next_event(), Ok(Some(Event::End)));
    }
}
