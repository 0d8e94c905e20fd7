//! Occupancy of a merchant's venues (`GET /merchant/occupancy`, `GET /device/occupancy`,
//! the `stile_venue_occupancy` gauge): tickets inside now, the day's entries and exits, and
//! a five-minute series through the merchant-local day.
//!
//! "Inside now" is the venue's running count (the figure an entry at capacity is decided
//! against, and changed on condition that a place is free); the series sums the day's passages' occupancy changes,
//! so a past day's series ends at what was inside at its end.

use crate::error::AppError;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use sqlx::PgPool;
use stile_shared::api::{OccupancyPoint, VenueOccupancy};

/// Which venues to report on.
#[derive(Debug, Clone, Copy)]
pub enum Venues<'a> {
    /// Every venue of the merchant (optionally one, by code).
    OfMerchant {
        merchant_id: i64,
        code: Option<&'a str>,
    },
    /// The venue of a location (a device's).
    OfLocation { location_id: i64 },
}

/// The occupancy of the chosen venues on `date` (today in the merchant's time zone when
/// `None`), by venue code.
pub async fn report(
    pool: &PgPool,
    venues: Venues<'_>,
    date: Option<NaiveDate>,
) -> Result<Vec<VenueOccupancy>, AppError> {
    type VenueRow = (
        i64,
        String,
        String,
        Option<i64>,
        i64,
        bool,
        NaiveDate,
        DateTime<Utc>,
        DateTime<Utc>,
        String,
    );
    let (merchant_id, code, location_id) = match venues {
        Venues::OfMerchant { merchant_id, code } => (Some(merchant_id), code, None),
        Venues::OfLocation { location_id } => (None, None, Some(location_id)),
    };
    // The day and its bounds in the merchant's zone; "inside" is the running count when the
    // day is today there, else 0 (the count is of its day).
    let rows: Vec<VenueRow> = sqlx::query_as(
        "WITH d AS (SELECT v.*, m.timezone, \
                  COALESCE($4::date, (now() AT TIME ZONE m.timezone)::date) AS day, \
                  (now() AT TIME ZONE m.timezone)::date AS today \
                  FROM venues v JOIN merchants m ON m.id = v.merchant_id \
                  WHERE ($1::bigint IS NULL OR v.merchant_id = $1) AND ($2::text IS NULL OR v.code = $2) \
                  AND ($3::bigint IS NULL OR v.id = (SELECT venue_id FROM locations WHERE id = $3))) \
         SELECT id, code, name, capacity, \
                CASE WHEN inside_on = day THEN inside ELSE 0 END, day = today, day, \
                day::timestamp AT TIME ZONE timezone, (day + 1)::timestamp AT TIME ZONE timezone, \
                timezone \
         FROM d ORDER BY code",
    )
    .bind(merchant_id)
    .bind(code)
    .bind(location_id)
    .bind(date)
    .fetch_all(pool)
    .await?;
    let mut report = Vec::with_capacity(rows.len());
    for (id, code, name, capacity, counted, is_today, day, start, end, zone) in rows {
        let buckets: Vec<(DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(
            "SELECT date_bin('5 minutes', at, $2) AS bucket, \
                    count(*) FILTER (WHERE direction = 'entry'), \
                    count(*) FILTER (WHERE direction = 'exit'), sum(delta)::bigint \
             FROM passages WHERE venue_id = $1 AND at >= $2 AND at < $3 \
             GROUP BY bucket ORDER BY bucket",
        )
        .bind(id)
        .bind(start)
        .bind(end)
        .fetch_all(pool)
        .await?;
        let offset = stile_shared::MerchantZone::parse(&zone)
            .ok_or_else(|| AppError::Internal(format!("merchant zone {zone:?}")))?;
        let mut inside = 0i64;
        let (mut entries, mut exits) = (0, 0);
        let mut series = Vec::with_capacity(buckets.len());
        for (at, bucket_entries, bucket_exits, change) in buckets {
            inside = (inside + change).max(0);
            entries += bucket_entries;
            exits += bucket_exits;
            series.push(OccupancyPoint {
                at: offset
                    .to_local_rfc3339(at.timestamp())
                    .unwrap_or_else(|| at.to_rfc3339_opts(SecondsFormat::Secs, true)),
                entries: bucket_entries,
                exits: bucket_exits,
                inside,
            });
        }
        report.push(VenueOccupancy {
            venue_code: code,
            name,
            // Today: the running count entries are decided against; another day: its end.
            inside: if is_today { counted } else { inside },
            capacity,
            entries,
            exits,
            date: day.format("%Y-%m-%d").to_string(),
            series,
        });
    }
    Ok(report)
}

/// A venue's occupancy now, for the gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenueCount {
    pub merchant_code: String,
    pub venue_code: String,
    pub inside: i64,
    pub capacity: Option<i64>,
}

/// Every venue's running count (0 when it is of another day than today in its merchant's
/// time zone).
pub async fn counts(pool: &PgPool) -> Result<Vec<VenueCount>, sqlx::Error> {
    let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT m.code, v.code, \
                CASE WHEN v.inside_on = (now() AT TIME ZONE m.timezone)::date THEN v.inside ELSE 0 END, \
                v.capacity \
         FROM venues v JOIN merchants m ON m.id = v.merchant_id ORDER BY m.code, v.code",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(merchant_code, venue_code, inside, capacity)| VenueCount {
            merchant_code,
            venue_code,
            inside,
            capacity,
        })
        .collect())
}
