//! Loading merchants, places, people, devices, channels, orders and tickets from a seed file
//! (`central-server seed FILE.json`; format in the README).
//!
//! Parsing and checking are pure ([`parse`]): a bad file is refused whole, naming the path
//! of the offending field, before anything is written. Applying ([`apply`]) runs in one
//! transaction with codes as natural keys: loading the same file twice changes nothing;
//! a changed file updates names, passwords, secrets, webhooks and bindings and adds what is
//! new, but never rewinds what use has changed (`remaining_uses`, `current_jti`, `USED`).
//! Ticket status only moves forward: `PRE_GENERATED` → `ACTIVATED`, and anything → `VOID`.

use crate::auth::{hash_password, sha256_hex, verify_password};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use stile_shared::domain::MIN_SECRET_LEN;
use stile_shared::token::{MAX_MERCHANT_CODE_LEN, MAX_TICKET_CODE_LEN};
use stile_shared::{Channel, FunctionCode, TicketStatus};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    #[serde(default)]
    pub channels: Vec<SeedChannel>,
    #[serde(default)]
    pub merchants: Vec<SeedMerchant>,
    #[serde(default)]
    pub orders: Vec<SeedOrder>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedChannel {
    pub name: String,
    pub kind: Channel,
    pub api_key: String,
    /// Codes of the merchants this channel sells for (issues QR codes for). When absent: the
    /// merchants of this same file (the contract's example has no list), and refused when
    /// the file has none, so a channel's reach is always written down somewhere.
    #[serde(default)]
    pub merchants: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedMerchant {
    pub code: String,
    pub name: String,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub webhook_secret: Option<String>,
    #[serde(default)]
    pub locations: Vec<SeedLocation>,
    #[serde(default)]
    pub operators: Vec<SeedOperator>,
    #[serde(default)]
    pub devices: Vec<SeedDevice>,
    /// Groups of this merchant's locations with an entry function and an optional capacity.
    /// A reload replaces them: a location no venue lists belongs to none.
    #[serde(default)]
    pub venues: Vec<SeedVenue>,
}

/// A venue: its locations' scans of `entry_function` are its entries (see
/// `stile_shared::venue`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedVenue {
    pub code: String,
    pub name: String,
    /// Tickets inside at most; none: no limit.
    #[serde(default)]
    pub capacity: Option<i64>,
    /// Defaults to `ENTRY`.
    #[serde(default)]
    pub entry_function: Option<FunctionCode>,
    /// `venue_code`s of this merchant's locations; each in one venue at most.
    pub locations: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedLocation {
    pub venue_code: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedOperator {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedDevice {
    pub device_id: String,
    pub venue_code: String,
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedOrder {
    pub order_id: String,
    pub merchant: String,
    #[serde(default)]
    pub passengers: Vec<SeedPassenger>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPassenger {
    pub name: String,
    #[serde(default)]
    pub tickets: Vec<SeedTicket>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTicket {
    pub ticket_code: String,
    pub channel: Channel,
    pub status: TicketStatus,
    #[serde(default)]
    pub entitlements: Vec<SeedEntitlement>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedEntitlement {
    pub function_code: FunctionCode,
    pub name: String,
    pub total_uses: i32,
    /// Defaults to `total_uses`.
    #[serde(default)]
    pub remaining_uses: Option<i32>,
    /// Check-in rules; none when absent. A reload replaces them (they are not use).
    #[serde(default)]
    pub rules: stile_shared::EntitlementRules,
}

/// Why a seed file was refused or could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("hashing a password failed: {0}")]
    Hash(String),
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> SeedError {
    SeedError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// Parses and checks a seed file's text. Nothing is written.
pub fn parse(text: &str) -> Result<SeedFile, SeedError> {
    let tree: serde_json::Value =
        serde_json::from_str(text).map_err(|error| invalid("$", error.to_string()))?;
    parse_tree(tree)
}

/// [`parse`] of a file already read as JSON (the admin API's body).
pub fn parse_tree(tree: serde_json::Value) -> Result<SeedFile, SeedError> {
    no_control_characters("$", &tree)?;
    let file: SeedFile = serde_path_to_error::deserialize(tree).map_err(|error| {
        let path = error.path().to_string();
        invalid(
            if path == "." { "$".to_owned() } else { path },
            error.inner().to_string(),
        )
    })?;
    validate(&file)?;
    Ok(file)
}

/// Refuses a NUL, a newline or any other control character in any string of the file (keys
/// included): names end up in SQL text columns, logs and CSV, none of which may carry them.
fn no_control_characters(path: &str, value: &serde_json::Value) -> Result<(), SeedError> {
    let refuse = |path: &str, text: &str| {
        if text.chars().any(char::is_control) {
            Err(invalid(
                path,
                "must not contain control characters (NUL, newline, ...)",
            ))
        } else {
            Ok(())
        }
    };
    match value {
        serde_json::Value::String(text) => refuse(path, text),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| no_control_characters(&format!("{path}[{i}]"), item)),
        serde_json::Value::Object(fields) => fields.iter().try_for_each(|(key, item)| {
            let path = if path == "$" {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            refuse(&path, key)?;
            no_control_characters(&path, item)
        }),
        _ => Ok(()),
    }
}

fn check_code(path: &str, code: &str, max: usize) -> Result<(), SeedError> {
    stile_shared::domain::check_code(code, max).map_err(|error| invalid(path, error.to_string()))
}

fn check_text(path: &str, text: &str) -> Result<(), SeedError> {
    if text.trim().is_empty() {
        return Err(invalid(path, "must not be empty"));
    }
    Ok(())
}

fn unique<'a>(seen: &mut HashSet<&'a str>, path: &str, key: &'a str) -> Result<(), SeedError> {
    if !seen.insert(key) {
        return Err(invalid(path, format!("{key:?} appears more than once")));
    }
    Ok(())
}

/// Checks everything that can be checked without the database.
pub fn validate(file: &SeedFile) -> Result<(), SeedError> {
    let mut channel_names = HashSet::new();
    for (i, channel) in file.channels.iter().enumerate() {
        let path = format!("channels[{i}]");
        check_text(&format!("{path}.name"), &channel.name)?;
        unique(&mut channel_names, &format!("{path}.name"), &channel.name)?;
        if channel.api_key.len() < MIN_SECRET_LEN {
            return Err(invalid(
                format!("{path}.api_key"),
                format!("must be at least {MIN_SECRET_LEN} characters"),
            ));
        }
        let mut sold_for = HashSet::new();
        if channel.merchants.is_none() && file.merchants.is_empty() {
            return Err(invalid(
                format!("{path}.merchants"),
                "required when the file lists no merchants: the codes this channel sells for",
            ));
        }
        for (j, merchant) in channel.merchants.iter().flatten().enumerate() {
            let mpath = format!("{path}.merchants[{j}]");
            check_code(&mpath, merchant, MAX_MERCHANT_CODE_LEN)?;
            unique(&mut sold_for, &mpath, merchant)?;
        }
    }
    let mut merchant_codes = HashSet::new();
    let mut usernames = HashSet::new();
    let mut device_ids = HashSet::new();
    for (i, merchant) in file.merchants.iter().enumerate() {
        let path = format!("merchants[{i}]");
        check_code(
            &format!("{path}.code"),
            &merchant.code,
            MAX_MERCHANT_CODE_LEN,
        )?;
        unique(&mut merchant_codes, &format!("{path}.code"), &merchant.code)?;
        check_text(&format!("{path}.name"), &merchant.name)?;
        if let Some(url) = &merchant.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    format!("{path}.webhook_url"),
                    "must be an http(s) URL",
                ));
            }
        }
        let mut venues = HashSet::new();
        for (j, location) in merchant.locations.iter().enumerate() {
            let lpath = format!("{path}.locations[{j}]");
            check_code(&format!("{lpath}.venue_code"), &location.venue_code, 64)?;
            unique(
                &mut venues,
                &format!("{lpath}.venue_code"),
                &location.venue_code,
            )?;
            check_text(&format!("{lpath}.name"), &location.name)?;
        }
        let mut venue_codes = HashSet::new();
        let mut grouped = HashSet::new();
        for (j, venue) in merchant.venues.iter().enumerate() {
            let vpath = format!("{path}.venues[{j}]");
            check_code(&format!("{vpath}.code"), &venue.code, 64)?;
            unique(&mut venue_codes, &format!("{vpath}.code"), &venue.code)?;
            check_text(&format!("{vpath}.name"), &venue.name)?;
            if venue.capacity.is_some_and(|capacity| capacity < 0) {
                return Err(invalid(
                    format!("{vpath}.capacity"),
                    "must not be negative (leave it out for no limit)",
                ));
            }
            for (k, location) in venue.locations.iter().enumerate() {
                let lpath = format!("{vpath}.locations[{k}]");
                if !venues.contains(location.as_str()) {
                    return Err(invalid(
                        lpath,
                        format!("no location {location:?} in merchants[{i}].locations"),
                    ));
                }
                if !grouped.insert(location.as_str()) {
                    return Err(invalid(
                        lpath,
                        format!("location {location:?} is already in a venue"),
                    ));
                }
            }
        }
        for (j, operator) in merchant.operators.iter().enumerate() {
            let opath = format!("{path}.operators[{j}]");
            check_code(&format!("{opath}.username"), &operator.username, 64)?;
            unique(
                &mut usernames,
                &format!("{opath}.username"),
                &operator.username,
            )?;
            if operator.password.is_empty() || operator.password.len() > 1024 {
                return Err(invalid(
                    format!("{opath}.password"),
                    "must be 1 to 1024 characters",
                ));
            }
        }
        for (j, device) in merchant.devices.iter().enumerate() {
            let dpath = format!("{path}.devices[{j}]");
            check_code(&format!("{dpath}.device_id"), &device.device_id, 64)?;
            unique(
                &mut device_ids,
                &format!("{dpath}.device_id"),
                &device.device_id,
            )?;
            if device.secret.len() < MIN_SECRET_LEN {
                return Err(invalid(
                    format!("{dpath}.secret"),
                    format!("must be at least {MIN_SECRET_LEN} characters"),
                ));
            }
        }
    }
    let mut order_ids = HashSet::new();
    let mut ticket_codes = HashSet::new();
    for (i, order) in file.orders.iter().enumerate() {
        let path = format!("orders[{i}]");
        check_code(&format!("{path}.order_id"), &order.order_id, 64)?;
        unique(&mut order_ids, &format!("{path}.order_id"), &order.order_id)?;
        check_code(
            &format!("{path}.merchant"),
            &order.merchant,
            MAX_MERCHANT_CODE_LEN,
        )?;
        for (j, passenger) in order.passengers.iter().enumerate() {
            let ppath = format!("{path}.passengers[{j}]");
            check_text(&format!("{ppath}.name"), &passenger.name)?;
            for (k, ticket) in passenger.tickets.iter().enumerate() {
                let tpath = format!("{ppath}.tickets[{k}]");
                check_code(
                    &format!("{tpath}.ticket_code"),
                    &ticket.ticket_code,
                    MAX_TICKET_CODE_LEN,
                )?;
                unique(
                    &mut ticket_codes,
                    &format!("{tpath}.ticket_code"),
                    &ticket.ticket_code,
                )?;
                let mut functions = HashSet::new();
                for (l, entitlement) in ticket.entitlements.iter().enumerate() {
                    let epath = format!("{tpath}.entitlements[{l}]");
                    unique(
                        &mut functions,
                        &format!("{epath}.function_code"),
                        entitlement.function_code.as_str(),
                    )?;
                    check_text(&format!("{epath}.name"), &entitlement.name)?;
                    if entitlement.total_uses < 0 {
                        return Err(invalid(
                            format!("{epath}.total_uses"),
                            "must not be negative",
                        ));
                    }
                    let remaining = entitlement.remaining_uses.unwrap_or(entitlement.total_uses);
                    if remaining < 0 || remaining > entitlement.total_uses {
                        return Err(invalid(
                            format!("{epath}.remaining_uses"),
                            "must be between 0 and total_uses",
                        ));
                    }
                    entitlement
                        .rules
                        .validate()
                        .map_err(|error| invalid(format!("{epath}.rules"), error.to_string()))?;
                }
            }
        }
    }
    Ok(())
}

/// What loading a file did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedSummary {
    /// Rows inserted or changed, by kind.
    pub changed: Vec<(&'static str, u64)>,
}

impl std::fmt::Display for SeedSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .changed
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect();
        write!(f, "rows inserted or changed: {}", parts.join(", "))
    }
}

struct Counter(Vec<(&'static str, u64)>);

impl Counter {
    fn add(&mut self, kind: &'static str, changed: bool) {
        match self.0.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += u64::from(changed),
            None => self.0.push((kind, u64::from(changed))),
        }
    }
}

/// Upserts a merchant's venues and puts each of its locations in the venue that lists it (or
/// in none).
async fn load_venues(
    tx: &mut sqlx::PgConnection,
    merchant_id: i64,
    merchant: &SeedMerchant,
    counter: &mut Counter,
) -> Result<(), SeedError> {
    let mut venue_of: Vec<(String, i64)> = Vec::new();
    for venue in &merchant.venues {
        let entry_function = venue
            .entry_function
            .as_ref()
            .map_or("ENTRY", FunctionCode::as_str);
        let changed: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO venues (merchant_id, code, name, capacity, entry_function)              VALUES ($1, $2, $3, $4, $5)              ON CONFLICT (merchant_id, code) DO UPDATE SET name = EXCLUDED.name,              capacity = EXCLUDED.capacity, entry_function = EXCLUDED.entry_function              WHERE (venues.name, venues.capacity, venues.entry_function)              IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.capacity, EXCLUDED.entry_function)              RETURNING id",
        )
        .bind(merchant_id)
        .bind(&venue.code)
        .bind(&venue.name)
        .bind(venue.capacity)
        .bind(entry_function)
        .fetch_optional(&mut *tx)
        .await?;
        counter.add("venues", changed.is_some());
        let (venue_id,): (i64,) =
            sqlx::query_as("SELECT id FROM venues WHERE merchant_id = $1 AND code = $2")
                .bind(merchant_id)
                .bind(&venue.code)
                .fetch_one(&mut *tx)
                .await?;
        venue_of.extend(venue.locations.iter().map(|l| (l.clone(), venue_id)));
    }
    let (codes, ids): (Vec<String>, Vec<i64>) = venue_of.into_iter().unzip();
    sqlx::query(
        "UPDATE locations l SET venue_id = v.venue_id          FROM (SELECT l2.id, x.venue_id FROM locations l2                LEFT JOIN unnest($2::text[], $3::bigint[]) AS x(code, venue_id) ON x.code = l2.venue_code                WHERE l2.merchant_id = $1) v          WHERE l.id = v.id AND l.venue_id IS DISTINCT FROM v.venue_id",
    )
    .bind(merchant_id)
    .bind(codes)
    .bind(ids)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Serialises seed loads across processes.
const SEED_LOCK: i64 = 0x5354_494c_4553_4544; // "STILESED"

/// Loads a checked file in one transaction.
pub async fn apply(pool: &PgPool, file: &SeedFile) -> Result<SeedSummary, SeedError> {
    let mut tx = crate::db::begin(pool).await?;
    // One loader at a time: two concurrent loads of overlapping files would race on upserts.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SEED_LOCK)
        .execute(&mut *tx)
        .await?;
    let mut counter = Counter(Vec::new());
    for channel in &file.channels {
        let changed = upsert_changed(
            &mut tx,
            "INSERT INTO channels (name, kind, api_key_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, api_key_hash = EXCLUDED.api_key_hash \
             WHERE (channels.kind, channels.api_key_hash) IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.api_key_hash) \
             RETURNING id",
            &[&channel.name, channel.kind.as_str(), &sha256_hex(&channel.api_key)],
        )
        .await?;
        counter.add("channels", changed);
    }
    let mut merchant_ids: HashMap<String, i64> = HashMap::new();
    for (i, merchant) in file.merchants.iter().enumerate() {
        let timezone = merchant
            .timezone
            .clone()
            .unwrap_or_else(|| "Asia/Shanghai".into());
        let known_zone: Option<(String,)> =
            sqlx::query_as("SELECT name FROM pg_timezone_names WHERE name = $1")
                .bind(&timezone)
                .fetch_optional(&mut *tx)
                .await?;
        if known_zone.is_none() {
            return Err(invalid(
                format!("merchants[{i}].timezone"),
                format!("{timezone:?} is not an IANA time zone name"),
            ));
        }
        let changed: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO merchants (code, name, timezone, webhook_url, webhook_secret) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, timezone = EXCLUDED.timezone, \
             webhook_url = EXCLUDED.webhook_url, webhook_secret = EXCLUDED.webhook_secret, updated_at = now() \
             WHERE (merchants.name, merchants.timezone, merchants.webhook_url, merchants.webhook_secret) \
             IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.timezone, EXCLUDED.webhook_url, EXCLUDED.webhook_secret) \
             RETURNING id",
        )
        .bind(&merchant.code)
        .bind(&merchant.name)
        .bind(&timezone)
        .bind(&merchant.webhook_url)
        .bind(&merchant.webhook_secret)
        .fetch_optional(&mut *tx)
        .await?;
        counter.add("merchants", changed.is_some());
        let merchant_id = merchant_id(&mut tx, &merchant.code)
            .await?
            .ok_or_else(|| invalid(format!("merchants[{i}].code"), "vanished while loading"))?;
        merchant_ids.insert(merchant.code.clone(), merchant_id);
        for location in &merchant.locations {
            let changed: Option<(i64,)> = sqlx::query_as(
                "INSERT INTO locations (merchant_id, venue_code, name) VALUES ($1, $2, $3) \
                 ON CONFLICT (merchant_id, venue_code) DO UPDATE SET name = EXCLUDED.name \
                 WHERE locations.name IS DISTINCT FROM EXCLUDED.name RETURNING id",
            )
            .bind(merchant_id)
            .bind(&location.venue_code)
            .bind(&location.name)
            .fetch_optional(&mut *tx)
            .await?;
            counter.add("locations", changed.is_some());
        }
        load_venues(&mut tx, merchant_id, merchant, &mut counter).await?;
        for (j, operator) in merchant.operators.iter().enumerate() {
            let changed = upsert_operator(&mut tx, merchant_id, operator)
                .await
                .map_err(|error| match error {
                    SeedError::Invalid { message, .. } => {
                        invalid(format!("merchants[{i}].operators[{j}].username"), message)
                    }
                    other => other,
                })?;
            counter.add("operators", changed);
        }
        for (j, device) in merchant.devices.iter().enumerate() {
            let location: Option<(i64,)> = sqlx::query_as(
                "SELECT id FROM locations WHERE merchant_id = $1 AND venue_code = $2",
            )
            .bind(merchant_id)
            .bind(&device.venue_code)
            .fetch_optional(&mut *tx)
            .await?;
            let (location_id,) = location.ok_or_else(|| {
                invalid(
                    format!("merchants[{i}].devices[{j}].venue_code"),
                    format!(
                        "no location {:?} for merchant {}",
                        device.venue_code, merchant.code
                    ),
                )
            })?;
            let owner: Option<(i64,)> =
                sqlx::query_as("SELECT merchant_id FROM devices WHERE device_id = $1")
                    .bind(&device.device_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if owner.is_some_and(|(owner,)| owner != merchant_id) {
                return Err(invalid(
                    format!("merchants[{i}].devices[{j}].device_id"),
                    "belongs to another merchant",
                ));
            }
            let changed: Option<(i64,)> = sqlx::query_as(
                "INSERT INTO devices (device_id, merchant_id, location_id, secret_hash) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device_id) DO UPDATE SET location_id = EXCLUDED.location_id, secret_hash = EXCLUDED.secret_hash \
                 WHERE (devices.location_id, devices.secret_hash) IS DISTINCT FROM (EXCLUDED.location_id, EXCLUDED.secret_hash) \
                 RETURNING id",
            )
            .bind(&device.device_id)
            .bind(merchant_id)
            .bind(location_id)
            .bind(sha256_hex(&device.secret))
            .fetch_optional(&mut *tx)
            .await?;
            counter.add("devices", changed.is_some());
        }
    }
    for (i, channel) in file.channels.iter().enumerate() {
        let listed: Vec<String> = match &channel.merchants {
            Some(codes) => codes.clone(),
            None => file.merchants.iter().map(|m| m.code.clone()).collect(),
        };
        let mut wanted = Vec::with_capacity(listed.len());
        for (j, code) in listed.iter().enumerate() {
            let id = match merchant_ids.get(code) {
                Some(id) => *id,
                None => merchant_id(&mut tx, code).await?.ok_or_else(|| {
                    invalid(
                        format!("channels[{i}].merchants[{j}]"),
                        format!("no merchant {code:?}"),
                    )
                })?,
            };
            wanted.push(id);
        }
        let removed = sqlx::query(
            "DELETE FROM channel_merchants cm USING channels c \
             WHERE cm.channel_id = c.id AND c.name = $1 AND NOT (cm.merchant_id = ANY($2))",
        )
        .bind(&channel.name)
        .bind(&wanted)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let added = sqlx::query(
            "INSERT INTO channel_merchants (channel_id, merchant_id) \
             SELECT c.id, m FROM channels c, unnest($2::bigint[]) AS m WHERE c.name = $1 \
             ON CONFLICT DO NOTHING",
        )
        .bind(&channel.name)
        .bind(&wanted)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        counter.add("channel_merchants", removed + added > 0);
    }
    for (i, order) in file.orders.iter().enumerate() {
        let path = format!("orders[{i}]");
        let merchant_id = match merchant_ids.get(&order.merchant) {
            Some(id) => *id,
            None => merchant_id(&mut tx, &order.merchant)
                .await?
                .ok_or_else(|| {
                    invalid(
                        format!("{path}.merchant"),
                        format!("no merchant {:?}", order.merchant),
                    )
                })?,
        };
        let existing: Option<(i64, i64)> =
            sqlx::query_as("SELECT id, merchant_id FROM orders WHERE order_code = $1")
                .bind(&order.order_id)
                .fetch_optional(&mut *tx)
                .await?;
        let order_pk = match existing {
            Some((_, owner)) if owner != merchant_id => {
                return Err(invalid(
                    format!("{path}.order_id"),
                    "belongs to another merchant",
                ))
            }
            Some((id, _)) => {
                counter.add("orders", false);
                id
            }
            None => {
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO orders (order_code, merchant_id) VALUES ($1, $2) RETURNING id",
                )
                .bind(&order.order_id)
                .bind(merchant_id)
                .fetch_one(&mut *tx)
                .await?;
                counter.add("orders", true);
                id
            }
        };
        for (j, passenger) in order.passengers.iter().enumerate() {
            for (k, ticket) in passenger.tickets.iter().enumerate() {
                let tpath = format!("{path}.passengers[{j}].tickets[{k}]");
                upsert_ticket(
                    &mut tx,
                    &tpath,
                    merchant_id,
                    order_pk,
                    &passenger.name,
                    ticket,
                    &mut counter,
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(SeedSummary { changed: counter.0 })
}

async fn merchant_id(tx: &mut PgConnection, code: &str) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM merchants WHERE code = $1")
        .bind(code)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(row.map(|(id,)| id))
}

async fn upsert_changed(
    tx: &mut PgConnection,
    sql: &str,
    binds: &[&str],
) -> Result<bool, sqlx::Error> {
    let mut query = sqlx::query_as::<_, (i64,)>(sql);
    for bind in binds {
        query = query.bind(*bind);
    }
    Ok(query.fetch_optional(&mut *tx).await?.is_some())
}

async fn upsert_operator(
    tx: &mut PgConnection,
    merchant_id: i64,
    operator: &SeedOperator,
) -> Result<bool, SeedError> {
    let display_name = operator.display_name.clone().unwrap_or_default();
    let existing: Option<(i64, i64, String)> =
        sqlx::query_as("SELECT id, merchant_id, password_hash FROM operators WHERE username = $1")
            .bind(&operator.username)
            .fetch_optional(&mut *tx)
            .await?;
    match existing {
        Some((_, owner, _)) if owner != merchant_id => Err(invalid(
            "",
            "this username belongs to another merchant's operator",
        )),
        Some((id, _, hash)) => {
            // Re-hash only when the password really changed: a fresh salt would otherwise
            // make every load a change.
            let password_matches = {
                let (hash, password) = (hash.clone(), operator.password.clone());
                tokio::task::spawn_blocking(move || verify_password(&hash, &password))
                    .await
                    .unwrap_or(false)
            };
            let new_hash = if password_matches {
                hash
            } else {
                hash_blocking(&operator.password).await?
            };
            let result = sqlx::query(
                "UPDATE operators SET password_hash = $2, display_name = $3 WHERE id = $1 \
                 AND (password_hash, display_name) IS DISTINCT FROM ($2, $3)",
            )
            .bind(id)
            .bind(&new_hash)
            .bind(&display_name)
            .execute(&mut *tx)
            .await?;
            Ok(result.rows_affected() > 0)
        }
        None => {
            let hash = hash_blocking(&operator.password).await?;
            sqlx::query(
                "INSERT INTO operators (merchant_id, username, password_hash, display_name) VALUES ($1, $2, $3, $4)",
            )
            .bind(merchant_id)
            .bind(&operator.username)
            .bind(&hash)
            .bind(&display_name)
            .execute(&mut *tx)
            .await?;
            Ok(true)
        }
    }
}

async fn hash_blocking(password: &str) -> Result<String, SeedError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|error| SeedError::Hash(error.to_string()))?
        .map_err(|error| SeedError::Hash(error.to_string()))
}

/// Status may only move forward: activation, and voiding from anywhere.
fn next_status(current: TicketStatus, in_file: TicketStatus) -> TicketStatus {
    match (current, in_file) {
        (_, TicketStatus::Void) => TicketStatus::Void,
        (TicketStatus::PreGenerated, TicketStatus::Activated) => TicketStatus::Activated,
        (current, _) => current,
    }
}

async fn upsert_ticket(
    tx: &mut PgConnection,
    path: &str,
    merchant_id: i64,
    order_pk: i64,
    passenger_name: &str,
    ticket: &SeedTicket,
    counter: &mut Counter,
) -> Result<(), SeedError> {
    let existing: Option<(i64, i64, String)> =
        sqlx::query_as("SELECT id, merchant_id, status FROM tickets WHERE ticket_code = $1")
            .bind(&ticket.ticket_code)
            .fetch_optional(&mut *tx)
            .await?;
    let ticket_id = match existing {
        Some((_, owner, _)) if owner != merchant_id => {
            return Err(invalid(
                format!("{path}.ticket_code"),
                "belongs to another merchant",
            ))
        }
        Some((id, _, status)) => {
            let current = TicketStatus::parse(&status).unwrap_or(TicketStatus::Void);
            let status = next_status(current, ticket.status);
            let result = sqlx::query(
                "UPDATE tickets SET order_id = $2, passenger_name = $3, channel = $4, status = $5, updated_at = now() \
                 WHERE id = $1 AND (order_id, passenger_name, channel, status) IS DISTINCT FROM ($2, $3, $4, $5)",
            )
            .bind(id)
            .bind(order_pk)
            .bind(passenger_name)
            .bind(ticket.channel.as_str())
            .bind(status.as_str())
            .execute(&mut *tx)
            .await?;
            counter.add("tickets", result.rows_affected() > 0);
            id
        }
        None => {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO tickets (ticket_code, order_id, merchant_id, passenger_name, channel, status) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(&ticket.ticket_code)
            .bind(order_pk)
            .bind(merchant_id)
            .bind(passenger_name)
            .bind(ticket.channel.as_str())
            .bind(ticket.status.as_str())
            .fetch_one(&mut *tx)
            .await?;
            counter.add("tickets", true);
            id
        }
    };
    for entitlement in &ticket.entitlements {
        let remaining = entitlement.remaining_uses.unwrap_or(entitlement.total_uses);
        // An existing entitlement keeps its counts (use may have changed them); its name and
        // its rules follow the file.
        let rules =
            (!entitlement.rules.is_empty()).then_some(sqlx::types::Json(&entitlement.rules));
        let changed: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO entitlements (ticket_id, merchant_id, function_code, name, total_uses, remaining_uses, rules) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (ticket_id, function_code) DO UPDATE SET name = EXCLUDED.name, rules = EXCLUDED.rules \
             WHERE (entitlements.name, entitlements.rules) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.rules) \
             RETURNING id",
        )
        .bind(ticket_id)
        .bind(merchant_id)
        .bind(entitlement.function_code.as_str())
        .bind(&entitlement.name)
        .bind(entitlement.total_uses)
        .bind(remaining)
        .bind(rules)
        .fetch_optional(&mut *tx)
        .await?;
        counter.add("entitlements", changed.is_some());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/seed.json");

    #[test]
    fn the_readme_example_parses() {
        let file = parse(EXAMPLE).expect("example is valid");
        assert_eq!(file.merchants[0].code, "M001");
    }

    #[test]
    fn the_contracts_example_with_channels_without_a_merchant_list_parses() {
        let contract = r#"{
          "channels": [{"name": "miniapp", "kind": "MINIAPP", "api_key": "ch-miniapp-secret"}],
          "merchants": [{"code": "M001", "name": "示例乐园"}]
        }"#;
        let file = parse(contract).expect("the contract's example loads");
        assert!(
            file.channels[0].merchants.is_none(),
            "it sells for the file's merchants"
        );
        let alone = r#"{"channels": [{"name": "c", "kind": "OTA", "api_key": "0123456789"}]}"#;
        match parse(alone) {
            Err(SeedError::Invalid { path, .. }) => assert_eq!(path, "channels[0].merchants"),
            other => panic!("a channel with no merchant anywhere: {other:?}"),
        }
    }

    #[test]
    fn bad_files_name_the_offending_field() {
        let cases = [
            (
                r#"{"merchants": [{"code": "M0001234X", "name": "x"}]}"#,
                "merchants[0].code",
            ),
            (
                r#"{"merchants": [{"code": "M1", "name": "x", "locations": [{"venue_code": "G", "name": "g"}, {"venue_code": "G", "name": "h"}]}]}"#,
                "merchants[0].locations[1].venue_code",
            ),
            (
                r#"{"orders": [{"order_id": "O1", "merchant": "M1", "passengers": [{"name": "a", "tickets": [{"ticket_code": "TK-0123456789", "channel": "OTA", "status": "ACTIVATED"}]}]}]}"#,
                "orders[0].passengers[0].tickets[0].ticket_code",
            ),
            (
                r#"{"orders": [{"order_id": "O1", "merchant": "M1", "passengers": [{"name": "a", "tickets": [{"ticket_code": "T1", "channel": "OTA", "status": "ACTIVATED", "entitlements": [{"function_code": "ENTRY", "name": "e", "total_uses": 1, "remaining_uses": 2}]}]}]}]}"#,
                "orders[0].passengers[0].tickets[0].entitlements[0].remaining_uses",
            ),
            (
                r#"{"orders": [{"order_id": "O1", "merchant": "M1", "passengers": [{"name": "a", "tickets": [{"ticket_code": "T1", "channel": "WEB", "status": "ACTIVATED"}]}]}]}"#,
                "orders[0].passengers[0].tickets[0].channel",
            ),
            (
                r#"{"orders": [{"order_id": "O1", "merchant": "M1", "passengers": [{"name": "a", "tickets": [{"ticket_code": "T1", "channel": "OTA", "status": "ACTIVATED", "entitlements": [{"function_code": "entry", "name": "e", "total_uses": 1}]}]}]}]}"#,
                "orders[0].passengers[0].tickets[0].entitlements[0].function_code",
            ),
            (r#"{"merchant": []}"#, "merchant"),
            (
                r#"{"merchants": [{"code": "M1", "name": "a\u0000b"}]}"#,
                "merchants[0].name",
            ),
            (
                r#"{"merchants": [{"code": "M1", "name": "x", "timezone": "Asia/Shanghai\n"}]}"#,
                "merchants[0].timezone",
            ),
            (
                r#"{"orders": [{"order_id": "O1", "merchant": "M1", "passengers": [{"name": "a\u001b[31m", "tickets": []}]}]}"#,
                "orders[0].passengers[0].name",
            ),
            (
                r#"{"channels": [{"name": "c", "kind": "OTA", "api_key": "short", "merchants": []}]}"#,
                "channels[0].api_key",
            ),
        ];
        for (text, path) in cases {
            match parse(text) {
                Err(SeedError::Invalid { path: got, .. }) => {
                    assert!(got.contains(path), "{text}: {got}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn status_only_moves_forward() {
        use TicketStatus::*;
        let cases = [
            (PreGenerated, Activated, Activated),
            (Activated, PreGenerated, Activated),
            (Used, Activated, Used),
            (Used, Void, Void),
            (Void, Activated, Void),
            (Activated, Activated, Activated),
        ];
        for (current, file, expected) in cases {
            assert_eq!(
                next_status(current, file),
                expected,
                "{current:?} + {file:?}"
            );
        }
    }
}
