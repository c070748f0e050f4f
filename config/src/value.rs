//! Parsing one raw configuration value (always text, whatever layer it came from) into a typed field.

use std::time::Duration;

/// Parses an integer in `min..=max`; the error text says what is allowed.
pub(crate) fn int<T>(raw: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match raw.trim().parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(format!("must be an integer from {min} to {max}")),
    }
}

/// Parses a humane duration ("2s", "500ms", "1m 30s") in `min..=max`.
pub(crate) fn duration(raw: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let allowed = || format!("must be a duration like \"2s\" or \"500ms\", from {} to {}", format_duration(min), format_duration(max));
    match humantime::parse_duration(raw.trim()) {
        Ok(d) if d >= min && d <= max => Ok(d),
        _ => Err(allowed()),
    }
}

/// Parses one of a fixed set of words.
pub(crate) fn choice<T: Copy>(raw: &str, options: &[(&str, T)]) -> Result<T, String> {
    let word = raw.trim();
    options.iter().find(|(name, _)| *name == word).map(|(_, v)| *v).ok_or_else(|| {
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        format!("must be one of {}", names.join(", "))
    })
}

/// Parses a non-empty string.
pub(crate) fn text(raw: &str) -> Result<String, String> {
    let s = raw.trim();
    if s.is_empty() { Err("must not be empty".to_owned()) } else { Ok(s.to_owned()) }
}

/// Formats a duration the way it is written in config ("2s", "500ms").
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_humane_forms_and_reject_words() {
        let max = Duration::from_secs(3600);
        assert_eq!(duration("2s", Duration::ZERO, max), Ok(Duration::from_secs(2)));
        assert_eq!(duration("500ms", Duration::ZERO, max), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1m 30s", Duration::ZERO, max), Ok(Duration::from_secs(90)));
        assert!(duration("soon", Duration::ZERO, max).is_err());
        assert!(duration("2", Duration::ZERO, max).is_err(), "a bare number has no unit");
        assert!(duration("2h", Duration::ZERO, max).is_err(), "above the maximum");
    }

    #[test]
    fn integers_respect_bounds() {
        assert_eq!(int::<u32>("50", 1, 100), Ok(50));
        assert!(int::<u32>("0", 1, 100).is_err());
        assert!(int::<u32>("-3", 1, 100).is_err());
        assert!(int::<u32>("ten", 1, 100).is_err());
    }
}
