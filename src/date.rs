//! Dates in the RFC 5322 §3.3 form (`Tue, 01 Dec 2026 19:06:42 +0100`) for `Received:`
//! headers, bounces and logs, in the machine's local time zone as configured (TZ or
//! /etc/localtime); no allocation besides the returned string, no DNS, no locale.

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats `t` as an RFC 5322 date-time in local time with its numeric zone offset.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let (fields, offset) = local_fields(secs).unwrap_or_else(|| (utc_fields(secs), 0));
    format_fields(&fields, offset)
}

/// Broken-down time: (year, month 0-11, day 1-31, weekday 0-6 from Sunday, h, m, s).
type Fields = (i64, usize, u32, usize, u32, u32, u32);

fn format_fields(f: &Fields, offset_secs: i64) -> String {
    let (year, month, day, wday, h, m, s) = *f;
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let off = offset_secs.unsigned_abs() / 60;
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} {}{:02}{:02}",
        DAYS[wday % 7],
        day,
        MONTHS[month % 12],
        year,
        h,
        m,
        s,
        sign,
        off / 60,
        off % 60
    )
}

/// Local time through `localtime_r`, which reads the zone once and caches it.
fn local_fields(secs: i64) -> Option<(Fields, i64)> {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r writes into the provided struct and reads only `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        return None;
    }
    let fields = (
        tm.tm_year as i64 + 1900,
        usize::try_from(tm.tm_mon).ok()?,
        u32::try_from(tm.tm_mday).ok()?,
        usize::try_from(tm.tm_wday).ok()?,
        u32::try_from(tm.tm_hour).ok()?,
        u32::try_from(tm.tm_min).ok()?,
        u32::try_from(tm.tm_sec).ok()?.min(59),
    );
    Some((fields, tm.tm_gmtoff))
}

/// UTC by arithmetic, the fallback when localtime fails.
fn utc_fields(secs: i64) -> Fields {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let wday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (year, month, day) = civil_from_days(days);
    let month0 = (month as usize).saturating_sub(1);
    (year, month0, day, wday, rem / 3600, rem / 60 % 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic Gregorian calendar
/// (Howard Hinnant's civil_from_days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// RFC 3339 in UTC (`2026-12-01T19:06:42Z`), with the nanoseconds as a fraction without
/// trailing zeros when `fraction` is set (none when they are zero). A clock before 1970
/// prints as the epoch.
pub fn rfc3339_utc(t: SystemTime, fraction: bool) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let nanos = since.subsec_nanos();
    let fraction = if !fraction || nanos == 0 {
        String::new()
    } else {
        let digits = format!("{nanos:09}");
        format!(".{}", digits.trim_end_matches('0'))
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_arithmetic_matches_known_dates() {
        let f = utc_fields(1_714_566_896);
        assert_eq!(format_fields(&f, 0), "Wed, 01 May 2024 12:34:56 +0000");
        let f = utc_fields(0);
        assert_eq!(format_fields(&f, 0), "Thu, 01 Jan 1970 00:00:00 +0000");
        let f = utc_fields(951_782_400); // leap day
        assert_eq!(format_fields(&f, 0), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn offsets_are_signed_hours_and_minutes() {
        let f = utc_fields(0);
        assert!(format_fields(&f, -(5 * 3600 + 30 * 60)).ends_with(" -0530"));
        assert!(format_fields(&f, 3600).ends_with(" +0100"));
    }

    #[test]
    fn local_date_has_the_rfc5322_shape() {
        let s = rfc5322_date(UNIX_EPOCH + Duration::from_secs(1_714_566_896));
        let parts: Vec<&str> = s.split(' ').collect();
        assert_eq!(parts.len(), 6, "{s}");
        assert!(parts[0].ends_with(','));
        assert_eq!(parts[4].len(), 8);
        assert!(parts[5].starts_with('+') || parts[5].starts_with('-'));
    }
}
