//! Human-friendly units in configuration values: durations (`"10s"`,
//! `"500ms"`, `"1m30s"`) and byte sizes (`"100MiB"`, `"64KiB"`, `"1MB"`).

use std::time::Duration;

/// Duration units, largest first, with their length in milliseconds.
const DURATION_UNITS: &[(&str, u64)] = &[
    ("d", 24 * 60 * 60 * 1000),
    ("h", 60 * 60 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses a duration such as `"10s"`, `"500ms"`, `"5m"`, `"1h"`, `"2d"` or a
/// combination written largest unit first, such as `"1m30s"` or `"1h30m"`.
///
/// Units: `ms`, `s`, `m`, `h`, `d`. A bare `"0"` is accepted as zero; any
/// other number needs a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let expected = || format!("expected a duration like \"10s\" or \"500ms\", found {s:?}");
    if text.is_empty() {
        return Err(format!("{} (the value is empty)", expected()));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        if text.bytes().all(|b| b == b'0') {
            return Ok(Duration::ZERO);
        }
        return Err(format!(
            "{} (a unit is required: ms, s, m, h or d, as in \"{text}s\")",
            expected()
        ));
    }

    let mut rest = text;
    let mut total_ms: u64 = 0;
    // Index into DURATION_UNITS of the previous part; each part must use a
    // strictly smaller unit, so "1m30s" is fine and "30s1m" or "1m1m" is not.
    let mut previous: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("{} (a number must come first)", expected()));
        }
        let (number, after) = rest.split_at(digits);
        if after.starts_with('.') {
            return Err(format!(
                "{} (fractions are not supported; use a smaller unit, as in \"1500ms\")",
                expected()
            ));
        }
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!(
                "{} (every number needs a unit: ms, s, m, h or d)",
                expected()
            ));
        }
        let Some(index) = DURATION_UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(format!(
                "{} (unknown unit {unit:?}; use ms, s, m, h or d)",
                expected()
            ));
        };
        if previous.is_some_and(|p| index <= p) {
            return Err(format!(
                "{} (write each unit once, largest first, as in \"1m30s\")",
                expected()
            ));
        }
        previous = Some(index);
        let too_large = || format!("duration {s:?} is too large");
        let value: u64 = number.parse().map_err(|_| too_large())?;
        let ms = value
            .checked_mul(DURATION_UNITS[index].1)
            .ok_or_else(too_large)?;
        total_ms = total_ms.checked_add(ms).ok_or_else(too_large)?;
        rest = next;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses a byte size such as `"100MiB"`, `"64KiB"`, `"1GiB"`, `"512B"`,
/// `"1KB"` (1000 bytes), `"1MB"` or plain digits (bytes).
///
/// Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal
/// units (`KB`, `MB`, `GB`, `TB`) powers of 1000. Units are matched without
/// regard to case; a space between the number and the unit is allowed.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let expected = || format!("expected a size like \"64KiB\" or \"100MiB\", found {s:?}");
    if text.is_empty() {
        return Err(format!("{} (the value is empty)", expected()));
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("{} (a number must come first)", expected()));
    }
    let (number, after) = text.split_at(digits);
    if after.starts_with('.') {
        return Err(format!(
            "{} (fractions are not supported; use a smaller unit, as in \"1536KiB\")",
            expected()
        ));
    }
    let unit = after.trim_start();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "tb" => 1000 * 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "k" | "m" | "g" | "t" => {
            let upper = unit.to_ascii_uppercase();
            return Err(format!(
                "{} (unit {unit:?} is ambiguous: write \"{upper}iB\" for powers of 1024 or \"{upper}B\" for powers of 1000)",
                expected()
            ));
        }
        _ => {
            return Err(format!(
                "{} (unknown unit {unit:?}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)",
                expected()
            ));
        }
    };
    let too_large = || format!("size {s:?} is too large");
    let value: u64 = number.parse().map_err(|_| too_large())?;
    value.checked_mul(multiplier).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(ms(10_000)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("5m"), Ok(ms(300_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("2d"), Ok(ms(2 * 86_400_000)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 3s "), Ok(ms(3000)));
    }

    #[test]
    fn combined_durations() {
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("1d2h3m4s5ms"), Ok(ms(93_784_005)));
        assert_eq!(parse_duration("1s500ms"), Ok(ms(1500)));
    }

    #[test]
    fn bad_durations() {
        assert_eq!(
            parse_duration("10x").unwrap_err(),
            "expected a duration like \"10s\" or \"500ms\", found \"10x\" (unknown unit \"x\"; use ms, s, m, h or d)"
        );
        let err = parse_duration("10").unwrap_err();
        assert!(err.starts_with("expected a duration like \"10s\" or \"500ms\", found \"10\""));
        assert!(err.contains("\"10s\""), "{err}");
        for bad in [
            "", " ", "s", "-1s", "1.5s", "10 s", "1S", "30s1m", "1m1m", "1m30", "ms", "1sec", "1s ",
        ] {
            if bad == "1s " {
                // Surrounding whitespace is trimmed.
                assert!(parse_duration(bad).is_ok());
                continue;
            }
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.starts_with("expected a duration like \"10s\" or \"500ms\", found "),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn duration_overflow() {
        assert_eq!(
            parse_duration("99999999999999999999s").unwrap_err(),
            "duration \"99999999999999999999s\" is too large"
        );
        assert!(parse_duration("18446744073709551615d").is_err());
        assert!(parse_duration("18446744073709551615ms").is_ok());
        assert!(parse_duration("18446744073709551615s").is_err());
        assert!(parse_duration("1d18446744073709551615ms").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100MiB"), Ok(100 * 1024 * 1024));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("3GB"), Ok(3_000_000_000));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("64kib"), Ok(65536));
        assert_eq!(parse_size("64 KiB"), Ok(65536));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn bad_sizes() {
        assert_eq!(
            parse_size("10x").unwrap_err(),
            "expected a size like \"64KiB\" or \"100MiB\", found \"10x\" (unknown unit \"x\"; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
        );
        assert_eq!(
            parse_size("1m").unwrap_err(),
            "expected a size like \"64KiB\" or \"100MiB\", found \"1m\" (unit \"m\" is ambiguous: write \"MiB\" for powers of 1024 or \"MB\" for powers of 1000)"
        );
        for bad in ["", "MiB", "-1", "1.5MiB", "1 2MiB", "1MiBs", "0x10"] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.starts_with("expected a size like \"64KiB\" or \"100MiB\", found "),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn size_overflow() {
        assert_eq!(
            parse_size("18446744073709551616").unwrap_err(),
            "size \"18446744073709551616\" is too large"
        );
        assert_eq!(
            parse_size("16777216TiB").unwrap_err(),
            "size \"16777216TiB\" is too large"
        );
        assert_eq!(parse_size("16777215TiB"), Ok(16_777_215u64 << 40));
    }
}
