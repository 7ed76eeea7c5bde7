//! Byte sizes as administrators write them in policies: `8GiB`, `500MB`, `1048576`.

use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;

/// A number of bytes, parsed from `N`, `N B`, `N KiB|MiB|GiB|TiB` (powers of 1024) or `N kB|KB|MB|GB|TB` (powers of
/// 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{input}' is not a size: {why} (write it like 8GiB, 500MB or 1048576)")]
pub struct SizeError {
    input: String,
    why: &'static str,
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |why| SizeError { input: input.to_owned(), why };
        let text = input.trim();
        let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(digits_end);
        if number.is_empty() {
            return Err(fail("it does not start with a whole number"));
        }
        let number: u64 = number.parse().map_err(|_| fail("the number is too large"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(fail("unknown unit")),
        };
        number.checked_mul(multiplier).map(ByteSize).ok_or_else(|| fail("the size overflows 64 bits"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, scale) in UNITS {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{}", self.0 / scale, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => text.parse().map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_administrators_write() {
        let cases = [
            ("8GiB", 8 << 30),
            ("8 GiB", 8 << 30),
            ("500MB", 500_000_000),
            ("1048576", 1_048_576),
            ("1KiB", 1024),
            ("0", 0),
            ("2TiB", 2 << 40),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        for text in ["", "GiB", "-1GiB", "1.5GiB", "8gib", "8 GiBs", "99999999999999999999", "17179869184TiB"] {
            assert!(text.parse::<ByteSize>().is_err(), "{text}");
        }
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(8 << 30).to_string(), "8GiB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
    }
}
