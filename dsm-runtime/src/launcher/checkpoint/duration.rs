//! Durations on the command line: `500ms`, `30s`, `10m`, `2h`.

use std::time::Duration;

/// Parses `text` as a number and a unit (`ms`, `s`, `m`, `h`); zero is refused.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?}: expected a duration such as 500ms, 30s, 10m or 2h");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(bad()),
    }
    .ok_or_else(bad)?;
    if ms == 0 {
        return Err(format!("{text:?}: must be longer than zero"));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_read_and_bad_values_refused() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        for bad in [
            "",
            "10",
            "m",
            "1.5m",
            "-3s",
            "0s",
            "10 m",
            "3d",
            "99999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
