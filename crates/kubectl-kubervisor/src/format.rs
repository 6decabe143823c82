//! Plain-text building blocks shared by the list and describe views.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;

/// What kubectl prints for an absent value.
pub const NONE: &str = "<none>";

/// Aligns columns like kubectl's tab writer: three spaces between columns, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    table_indented("", headers, rows)
}

/// [`table`] with every line prefixed by `indent` (describe nests tables under a heading).
pub fn table_indented(indent: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::from(indent);
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count());
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// kubectl's age format (apimachinery `HumanDuration`): `45s`, `3m12s`, `5h20m`, `3d4h`, `2y30d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

/// Time elapsed from `then` to `now`, in kubectl's age format.
pub fn age(then: Timestamp, now: Timestamp) -> String {
    human_duration(now.as_second() - then.as_second())
}

/// `a=1,b=2`, the way kubectl prints selectors.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return NONE.into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Seconds as a short duration: `5s`, `0.5s`, `1m30s`.
pub fn seconds(value: f64) -> String {
    if !value.is_finite() || value < 0.0 {
        return format!("{value}s");
    }
    if value < 60.0 || value.fract() != 0.0 {
        return format!("{value}s");
    }
    let whole = value as i64;
    let (h, m, s) = (whole / 3600, whole % 3600 / 60, whole % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s > 0 {
        let _ = write!(out, "{s}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_with_three_spaces_and_no_trailing_blanks() {
        let out = table(
            &["NAME", "STATE", "AGE"],
            &[
                vec!["web".into(), "Running".into(), "5m".into()],
                vec!["checkout".into(), "".into(), "10s".into()],
            ],
        );
        assert_eq!(
            out,
            "NAME       STATE     AGE\nweb        Running   5m\ncheckout             10s\n"
        );
    }

    #[test]
    fn table_with_no_rows_prints_only_headers() {
        assert_eq!(table(&["NAME", "AGE"], &[]), "NAME   AGE\n");
    }

    #[test]
    fn human_duration_matches_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (185, "3m5s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 20 * 60, "5h20m"),
            (8 * 3600 + 59 * 60, "8h"),
            (47 * 3600, "47h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (4 * 86400, "4d"),
            (30 * 86400, "30d"),
            (2 * 365 * 86400 + 30 * 86400, "2y30d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_duration(seconds), expected, "{seconds}s");
        }
    }

    #[test]
    fn selector_is_sorted_and_comma_separated() {
        let labels: BTreeMap<String, String> = [("kubervisor/traffic", "yes"), ("app", "web")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(selector(&labels), "app=web,kubervisor/traffic=yes");
        assert_eq!(selector(&BTreeMap::new()), NONE);
    }

    #[test]
    fn seconds_are_short_and_keep_fractions() {
        assert_eq!(seconds(5.0), "5s");
        assert_eq!(seconds(0.5), "0.5s");
        assert_eq!(seconds(90.0), "1m30s");
        assert_eq!(seconds(3600.0), "1h");
        assert_eq!(seconds(90.5), "90.5s");
    }
}
