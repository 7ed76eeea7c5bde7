//! Time, identifiers and hex: the one copy of each small helper every wing uses.

use time::format_description::well_known::Rfc3339;

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// RFC 3339 in UTC, for people and JSON.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// RFC 3339 in UTC from nanoseconds (file modification times); empty when out of range.
pub fn rfc3339_ns(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// `2027-01-31` (midnight UTC) or a full RFC 3339 time, as unix seconds.
pub fn parse_date(text: &str) -> Result<i64, String> {
    if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at.unix_timestamp());
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|date| date.midnight().assume_utc().unix_timestamp())
        .map_err(|_| format!("'{text}' is not a date (write 2027-01-31 or 2027-01-31T12:00:00Z)"))
}

/// Seconds written as `600`, `600s`, `10m` or `1h`.
pub fn parse_seconds(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("'{text}' is not a duration (write 600, 600s, 10m or 1h)")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("'{text}' is not a duration (write 600, 600s, 10m or 1h)"))
}

/// For configuration fields that hold a duration in seconds.
pub fn deserialize_seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(u64),
        Text(String),
    }
    match <Written as serde::Deserialize>::deserialize(deserializer)? {
        Written::Number(n) => Ok(n),
        Written::Text(text) => parse_seconds(&text).map_err(serde::de::Error::custom),
    }
}

/// A new identifier: 16 hex digits of a random UUID.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0xf) as usize] as char);
    }
    out
}

/// The bytes of `text` read as hex, when it is exactly `N` bytes' worth.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("2027-01-01").unwrap(), 1_798_761_600);
        assert_eq!(parse_date("2027-01-01T00:00:10Z").unwrap(), 1_798_761_610);
        assert!(parse_date("tomorrow").is_err());
        assert_eq!(rfc3339(1_798_761_600), "2027-01-01T00:00:00Z");
        assert_eq!(rfc3339_ns(1_798_761_600_500_000_000), "2027-01-01T00:00:00.5Z");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("600"), Ok(600));
        assert_eq!(parse_seconds("10m"), Ok(600));
        assert_eq!(parse_seconds("1h"), Ok(3600));
        assert!(parse_seconds("10 minutes").is_err());
        assert!(parse_seconds("m").is_err());
    }

    #[test]
    fn hex_both_ways() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
        assert_eq!(from_hex::<3>("00ab10"), Some([0x00, 0xab, 0x10]));
        assert_eq!(from_hex::<3>("00ab1"), None);
        assert_eq!(from_hex::<2>("zz00"), None);
        assert_eq!(new_id().len(), 16);
    }
}
