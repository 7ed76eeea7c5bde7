//! Fuzzes the service's multipart parser (`evosync::multipart`) and the name checks its parts meet: any bytes as a
//! form body, fed whole and in pieces whose sizes come from the input. Nothing may panic; the parser never holds more
//! than its limits plus one piece; the pieces do not change what comes out; and whatever the name checks accept is
//! a plain folder path of bounded depth and a plain file name.
#![no_main]

use evosync::multipart::{Event, Limits, MultipartError, Parser};
use evosync::names::{check_file_name, check_subdir, is_plain_segment, MAX_SUBDIR_DEPTH};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { part_headers: 256, preamble: 256 };
const BOUNDARY: &str = "XyZ";

/// Events with consecutive data joined, and the error that ended them, if any.
fn parse(body: &[u8], piece_sizes: &[u8]) -> (Vec<Event>, Option<MultipartError>) {
    let mut parser = Parser::new(BOUNDARY, LIMITS);
    let mut events: Vec<Event> = Vec::new();
    let mut rest = body;
    let mut sizes = piece_sizes.iter().cycle();
    let mut largest_piece = 0;
    loop {
        let bound = LIMITS.part_headers.max(LIMITS.preamble) + 4 + largest_piece + BOUNDARY.len() + 4;
        assert!(parser.buffered() <= bound, "holds {} bytes, bound {bound}", parser.buffered());
        match parser.next_event() {
            Err(error) => return (events, Some(error)),
            Ok(Some(Event::End)) => {
                events.push(Event::End);
                return (events, None);
            }
            Ok(Some(Event::Data(bytes))) => {
                assert!(!bytes.is_empty());
                match events.last_mut() {
                    Some(Event::Data(joined)) => *joined = [joined.as_ref(), bytes.as_ref()].concat().into(),
                    _ => events.push(Event::Data(bytes)),
                }
            }
            Ok(Some(event)) => events.push(event),
            Ok(None) if rest.is_empty() => parser.end_input(),
            Ok(None) => {
                let size = match piece_sizes {
                    [] => rest.len(),
                    _ => usize::from(*sizes.next().unwrap_or(&1)).max(1).min(rest.len()),
                };
                largest_piece = largest_piece.max(size);
                parser.push(&rest[..size]);
                rest = &rest[size..];
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (sizes, body) = data.split_at(data.first().map_or(0, |&n| usize::from(n % 8)).min(data.len()));
    let whole = parse(body, &[]);
    let pieces = parse(body, sizes);
    assert_eq!(whole, pieces, "feeding in pieces changed the outcome");

    let extensions = [".json.gz".to_owned(), ".json".to_owned()];
    let mut field = None;
    for event in &whole.0 {
        match event {
            Event::Part(part) => {
                field = part.name.clone();
                if let Some(name) = &part.filename {
                    if check_file_name(name, &extensions).is_ok() {
                        assert!(is_plain_segment(name) && !name.contains(".sqlite") && !name.contains(".db"));
                    }
                }
            }
            Event::Data(bytes) if field.as_deref() == Some("subdir") => {
                if let Ok(segments) = check_subdir(&String::from_utf8_lossy(bytes)) {
                    assert!(segments.len() <= 1 + MAX_SUBDIR_DEPTH);
                    assert!(segments.iter().all(|s| is_plain_segment(s)));
                }
            }
            _ => {}
        }
    }
});
