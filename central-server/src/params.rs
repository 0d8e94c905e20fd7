//! Query values parsed strictly: what a client sends is either exactly right or a 400 naming
//! the parameter. `limit=` (empty), `limit=+5`, `limit=05`, `date=2026-1-1` and
//! `date=-0001-01-01` are all refused; there is one spelling of each value.

use chrono::NaiveDate;

/// A page size: 1 to `max` in plain decimal digits (no sign, no leading zero, not empty);
/// `default` when the parameter is absent.
pub fn limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, String> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let refused = || format!("limit must be a whole number from 1 to {max}");
    if raw.is_empty()
        || raw.len() > 19
        || raw.starts_with('0')
        || !raw.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(refused());
    }
    raw.parse::<i64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(refused)
}

/// A calendar date written `YYYY-MM-DD` (four-digit year, two-digit month and day); `None`
/// when absent (the caller's default day). Empty is refused like any other misspelling.
pub fn date(raw: Option<&str>) -> Result<Option<NaiveDate>, String> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let refused = || "date must be a calendar date YYYY-MM-DD".to_owned();
    let shape = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shape {
        return Err(refused());
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| refused())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_have_one_spelling() {
        assert_eq!(limit(None, 50, 200), Ok(50));
        assert_eq!(limit(Some("1"), 50, 200), Ok(1));
        assert_eq!(limit(Some("200"), 50, 200), Ok(200));
        for bad in [
            "",
            "+5",
            "-5",
            "05",
            "0",
            "201",
            " 5",
            "5 ",
            "5.0",
            "1e2",
            "99999999999999999999",
        ] {
            assert!(limit(Some(bad), 50, 200).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dates_have_one_spelling() {
        assert_eq!(date(None), Ok(None));
        assert!(date(Some("")).is_err());
        assert_eq!(
            date(Some("2026-12-02")),
            Ok(NaiveDate::from_ymd_opt(2026, 12, 2))
        );
        for bad in [
            "2026-1-1",
            "-0001-01-01",
            "+2026-01-01",
            "2026-02-30",
            "20261202",
            "2026-12-02T00:00:00",
            "２０２６-12-02",
        ] {
            assert!(date(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
