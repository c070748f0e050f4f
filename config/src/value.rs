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

/// Parses a number in `min..=max`.
pub(crate) fn float(raw: &str, min: f64, max: f64) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= min && v <= max => Ok(v),
        _ => Err(format!("must be a number from {min} to {max}")),
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

/// Parses `true` or `false`.
pub(crate) fn boolean(raw: &str) -> Result<bool, String> {
    match raw.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be true or false".to_owned()),
    }
}

/// Parses a URL whose scheme is one of `schemes` and that names a host (or, for `unix`, a path),
/// with a numeric port when one is given. Credentials are never echoed back.
pub(crate) fn url(raw: &str, schemes: &[&str]) -> Result<String, String> {
    let text = text(raw)?;
    let allowed = || schemes.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(", ");
    let parsed = url::Url::parse(&text).map_err(|e| format!("must be a URL starting with {} ({e})", allowed()))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(format!("must be a URL starting with {}", allowed()));
    }
    let is_socket = parsed.scheme().ends_with("unix");
    if is_socket {
        if parsed.path().is_empty() || parsed.path() == "/" {
            return Err("a unix:// URL must name the socket path, like unix:///run/redis.sock".to_owned());
        }
    } else if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("must name a host, like {}127.0.0.1:6379", allowed().split(',').next().unwrap_or_default()));
    }
    Ok(text)
}

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`. Text that is not a URL is
/// returned with everything between `://` and `@` masked, so a malformed URL cannot leak either.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) => {
            let mut changed = false;
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
                changed = true;
            }
            // unix:///path?pass=… carries the password as a query parameter.
            if u.query_pairs().any(|(k, _)| k == "pass") {
                changed = true;
                let pairs: Vec<(String, String)> =
                    u.query_pairs().map(|(k, v)| (k.to_string(), if k == "pass" { "***".to_owned() } else { v.to_string() })).collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            if changed { u.to_string() } else { text.to_owned() }
        }
        // Not a URL the parser takes (a bad port, say): whatever stands between the scheme and
        // the last '@' is masked, user and password together, and so is a `pass=` parameter.
        Err(_) => {
            let masked = match (text.find("://"), text.rfind('@')) {
                (Some(start), Some(at)) if at > start => format!("{}://***{}", &text[..start], &text[at..]),
                _ => text.to_owned(),
            };
            match masked.find("pass=") {
                Some(at) => {
                    let end = masked[at..].find('&').map_or(masked.len(), |e| at + e);
                    format!("{}pass=***{}", &masked[..at], &masked[end..])
                }
                None => masked,
            }
        }
    }
}

/// One window of a rate policy: at most `limit` admissions in any interval of `span`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    pub limit: u32,
    pub span: Duration,
}

impl std::fmt::Display for RateWindow {
    /// Short form that loads back: `20/s`, `5000/h`, `50/10s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.span.as_millis() {
            1_000 => "s".to_owned(),
            60_000 => "m".to_owned(),
            3_600_000 => "h".to_owned(),
            86_400_000 => "d".to_owned(),
            _ => format_duration(self.span).replace(' ', ""),
        };
        write!(f, "{}/{unit}", self.limit)
    }
}

/// Parses a rate policy: `"20/SECOND, 5000/HOUR"`, `"20/s,5000/h"`, `"50/10s"`; empty means none.
/// Windows must grow strictly, and a longer window may not allow fewer than a shorter one.
pub fn rates(raw: &str) -> Result<Vec<RateWindow>, String> {
    const FORMS: &str = "a comma-separated list like \"20/s, 5000/h\" (units SECOND, MINUTE, HOUR, DAY or s, m, h, d, or any duration as in \"50/10s\"), or empty for no rate policy";
    let mut windows: Vec<RateWindow> = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((limit, per)) = item.split_once('/') else {
            return Err(format!("\"{item}\" is not a rate; must be {FORMS}"));
        };
        let limit: u32 = limit.trim().parse().map_err(|_| format!("\"{item}\": the count must be a whole number; must be {FORMS}"))?;
        if limit == 0 {
            return Err(format!("\"{item}\" is a zero rate, which would admit nothing; remove the policy instead (empty list)"));
        }
        let span = match per.trim().to_ascii_uppercase().as_str() {
            "SECOND" | "S" => Duration::from_secs(1),
            "MINUTE" | "M" => Duration::from_secs(60),
            "HOUR" | "H" => Duration::from_secs(3_600),
            "DAY" | "D" => Duration::from_secs(86_400),
            _ => humantime::parse_duration(per.trim()).map_err(|_| format!("\"{item}\": unknown window \"{per}\"; must be {FORMS}"))?,
        };
        if span < Duration::from_millis(1) {
            return Err(format!("\"{item}\": the window must be at least 1ms"));
        }
        if let Some(previous) = windows.last() {
            if span <= previous.span {
                return Err(format!("windows must be listed shortest first and strictly increasing: \"{item}\" comes after {previous}"));
            }
            if limit < previous.limit {
                return Err(format!(
                    "\"{item}\" allows fewer than the shorter window {previous}; a longer window must allow at least as many"
                ));
            }
        }
        windows.push(RateWindow { limit, span });
    }
    Ok(windows)
}

/// Formats a duration the way it is written in config ("2s", "500ms").
pub fn format_duration(d: Duration) -> String {
    // humantime writes 90 days as "2months 29days 2h 52m 48s" (its month is 30.44 days): one
    // whole unit, the largest that divides the duration, reads the way people write durations
    // and loads back the same.
    const UNITS: [(u128, &str); 5] = [(86_400_000, "days"), (3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")];
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return humantime::format_duration(d).to_string();
    }
    if ms == 0 {
        return "0s".to_owned();
    }
    let (unit, name) = UNITS.iter().find(|(unit, _)| ms.is_multiple_of(*unit)).copied().unwrap_or((1, "ms"));
    let n = ms / unit;
    if name == "days" && n == 1 { "1day".to_owned() } else { format!("{n}{name}") }
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
    fn urls_are_checked_whole() {
        let redis = ["redis", "rediss", "unix"];
        assert!(url("redis://127.0.0.1:6379", &redis).is_ok());
        assert!(url("redis://:secret@host:6379/2", &redis).is_ok());
        assert!(url("unix:///run/redis.sock", &redis).is_ok());
        let bad_port = url("redis://127.0.0.1:notaport", &redis).expect_err("port must be a number");
        assert!(bad_port.contains("port"), "{bad_port}");
        assert!(url("http://127.0.0.1:6379", &redis).is_err());
        assert!(url("redis://", &redis).is_err());
        assert!(url("unix://", &redis).is_err());
        let leaked = url("redis://:hunter2@127.0.0.1:notaport", &redis).expect_err("bad port");
        assert!(!leaked.contains("hunter2"), "{leaked}");
    }

    #[test]
    fn rates_accept_long_short_and_any_duration_forms() {
        let w = |limit, secs| RateWindow { limit, span: Duration::from_secs(secs) };
        assert_eq!(rates("10/SECOND, 5000/HOUR"), Ok(vec![w(10, 1), w(5000, 3600)]));
        assert_eq!(rates("20/s,5000/h"), Ok(vec![w(20, 1), w(5000, 3600)]));
        assert_eq!(rates("10/s, 50/10s, 100/minute, 1000/d"), Ok(vec![w(10, 1), w(50, 10), w(100, 60), w(1000, 86_400)]));
        assert_eq!(rates(""), Ok(vec![]), "empty: no policy");
        let shown: Vec<String> = rates("10/s,50/10s,5000/h").expect("valid").iter().map(ToString::to_string).collect();
        assert_eq!(shown.join(","), "10/s,50/10s,5000/h");
    }

    #[test]
    fn rates_refuse_zero_unordered_and_shrinking_windows() {
        assert!(rates("0/s").expect_err("zero").contains("zero rate"));
        assert!(rates("10/h, 20/s").expect_err("unordered").contains("strictly increasing"));
        assert!(rates("10/s, 20/s").expect_err("same window twice").contains("strictly increasing"));
        assert!(rates("10/s, 5/m").expect_err("longer window allows less").contains("at least as many"));
        assert!(rates("10/fortnight").expect_err("unknown unit").contains("unknown window"));
        assert!(rates("ten/s").expect_err("count").contains("whole number"));
        assert!(rates("10").expect_err("no window").contains("not a rate"));
    }

    #[test]
    fn integers_respect_bounds() {
        assert_eq!(int::<u32>("50", 1, 100), Ok(50));
        assert!(int::<u32>("0", 1, 100).is_err());
        assert!(int::<u32>("-3", 1, 100).is_err());
        assert!(int::<u32>("ten", 1, 100).is_err());
    }

    #[test]
    fn passwords_are_masked_in_the_userinfo_and_in_a_unix_urls_query() {
        assert_eq!(redact_url("redis://:secret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("unix:///tmp/r.sock?db=2&pass=secret"), "unix:///tmp/r.sock?db=2&pass=***");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379", "no password, untouched");
        assert!(!redact_url("redis+unix:///tmp/r.sock?pass=secret").contains("secret"));
        // Not parseable as a URL (a bad port): still masked.
        assert_eq!(redact_url("redis://app:hunter2@redis.internal:notaport"), "redis://***@redis.internal:notaport");
        assert_eq!(redact_url("rediss://:hunter2@[::1"), "rediss://***@[::1");
    }

    #[test]
    fn durations_print_in_one_whole_unit_and_load_back() {
        let max = Duration::from_secs(365 * 86_400);
        for (d, shown) in [
            (Duration::from_secs(90 * 86_400), "90days"),
            (Duration::from_secs(86_400), "1day"),
            (Duration::from_secs(48 * 3600), "2days"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(120), "2m"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(d), shown);
            assert_eq!(duration(shown, Duration::ZERO, max), Ok(d), "{shown} loads back");
        }
    }
}
