//! What an analysis file must be before readers see it. Readers (kromosynth-evoruns) gunzip the `.gz` files they
//! serve, so a small upload that inflates to gigabytes would cost them, not the uploader: a file that is gzip (by its
//! magic bytes, whatever its name) is inflated as it arrives, counting what it inflates to, and refused past
//! `uploads.max_inflated_bytes`. Inflating stops where the data stops being valid gzip, as a reader's would; data
//! that is no gzip at all is stored as it is.

use flate2::write::MultiGzDecoder;
use std::io::Write;

/// Why a file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    #[error("'{name}' inflates to more than {limit} bytes (uploads.max_inflated_bytes)")]
    Inflates { name: String, limit: u64 },
}

/// Counts bytes, keeps none; refuses past the limit.
struct Counter {
    bytes: u64,
    limit: u64,
}

impl Write for Counter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.bytes = self.bytes.saturating_add(data.len() as u64);
        if self.bytes > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The gzip magic bytes.
const GZIP: [u8; 2] = [0x1f, 0x8b];

/// The check of one file as its bytes arrive.
pub struct InflateCheck {
    name: String,
    limit: u64,
    /// The first bytes, until there are two (whether the file is gzip).
    start: Vec<u8>,
    decoder: Option<MultiGzDecoder<Counter>>,
    /// Inflating is over: the file is no gzip, or its gzip ended being valid.
    done: bool,
}

impl InflateCheck {
    pub fn for_file(name: &str, limit: u64) -> InflateCheck {
        InflateCheck { name: name.to_owned(), limit, start: Vec::new(), decoder: None, done: false }
    }

    /// The next bytes of the file.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), FileProblem> {
        if self.done {
            return Ok(());
        }
        if self.decoder.is_none() {
            let wanted = (GZIP.len() - self.start.len()).min(data.len());
            self.start.extend_from_slice(&data[..wanted]);
            data = &data[wanted..];
            if self.start.len() < GZIP.len() {
                return Ok(());
            }
            if self.start != GZIP {
                self.done = true;
                return Ok(());
            }
            self.decoder = Some(MultiGzDecoder::new(Counter { bytes: 0, limit: self.limit }));
            let start = std::mem::take(&mut self.start);
            self.write(&start)?;
        }
        self.write(data)
    }

    fn write(&mut self, data: &[u8]) -> Result<(), FileProblem> {
        let Some(decoder) = &mut self.decoder else { return Ok(()) };
        if let Err(error) = decoder.write_all(data) {
            return self.ended(error);
        }
        Ok(())
    }

    /// The file's end.
    pub fn finish(mut self) -> Result<(), FileProblem> {
        if self.done {
            return Ok(());
        }
        match self.decoder.as_mut().map(|d| d.try_finish()) {
            Some(Err(error)) => self.ended(error),
            _ => Ok(()),
        }
    }

    /// The decoder stopped: past the limit (refused), or at data that is no valid gzip (inflating ends there, as a
    /// reader's would).
    fn ended(&mut self, _error: std::io::Error) -> Result<(), FileProblem> {
        let inflated = self.decoder.as_ref().map_or(0, |d| d.get_ref().bytes);
        self.done = true;
        if inflated > self.limit {
            return Err(FileProblem::Inflates { name: self.name.clone(), limit: self.limit });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn check(name: &str, bytes: &[u8], limit: u64, piece: usize) -> Result<(), FileProblem> {
        let mut check = InflateCheck::for_file(name, limit);
        for chunk in bytes.chunks(piece) {
            check.feed(chunk)?;
        }
        check.finish()
    }

    #[test]
    fn a_bomb_is_refused_as_it_arrives_and_everything_else_passes_in_any_pieces() {
        let honest = gzip(br#"{"coverage": 0.5}"#);
        for piece in [1, 7, 4096] {
            assert_eq!(check("coverage.json.gz", &honest, 1 << 20, piece), Ok(()));
        }
        let bomb = gzip(&vec![0u8; 4 << 20]);
        assert!(bomb.len() < 8 << 10, "{}", bomb.len());
        for piece in [1, 1024] {
            assert!(matches!(check("x.json.gz", &bomb, 1 << 20, piece), Err(FileProblem::Inflates { .. })));
        }
        assert!(matches!(check("named.json", &bomb, 1 << 20, 512), Err(FileProblem::Inflates { .. })), "by content");
        assert_eq!(check("x.json.gz", b"{\"not\": \"gzip\"}", 10, 5), Ok(()), "no gzip: stored as it is");
        assert_eq!(check("x.json.gz", &honest[..honest.len() - 9], 1 << 20, 64), Ok(()), "cut short: as far as valid");
        assert_eq!(check("x.json.gz", b"", 1, 1), Ok(()));
        let two = [gzip(b"a"), gzip(b"b")].concat();
        assert_eq!(check("x.json.gz", &two, 10, 3), Ok(()), "concatenated members, as gzip allows");
        let two_bombs = [gzip(&vec![0u8; 700 << 10]), gzip(&vec![0u8; 700 << 10])].concat();
        assert!(matches!(check("x.json.gz", &two_bombs, 1 << 20, 4096), Err(FileProblem::Inflates { .. })));
    }
}
