//! Where the gate decides: [`Gate::decide_code`] runs the stages, each of which answers or
//! hands on, then records and shows the outcome in one place (see the module doc of
//! [`crate::decide`]).
//!
//! At a venue ([`super::venue`]), an entry gate's scan of the venue's entry function is
//! decided with the ticket's presence and the venue's occupancy, and an exit gate's scans
//! are exits (`decide_exit`); both record the passage's occupancy change with the decision.

use super::decision::{mask_ticket_code, GateDecision, Origin, Outcome, Staged, DECISION_BUDGET};
use super::gate::Gate;
use super::session::OperatorSession;
use super::venue::{self, VenueClock, VenueRecords};
use crate::peers::Announced;
use crate::store::{
    now_rfc3339, snapshot_for_decision, AcceptedBy, DecisionRecord, Mode, Store, StoreError,
};
use crate::uplink::central::CallError;
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stile_shared::api::{ScanRequest, ScanResponse, SyncedTicket, TicketView};
use stile_shared::decision::{check_token, decide, remaining_after, Decision, DecisionInput};
use stile_shared::token::{verify, QrClaims};
use stile_shared::venue::{decide_exit, Direction, ExitDecision, VenueSnapshot};
use stile_shared::{ApiCode, Channel, DecisionCode, FunctionCode, Lang, MerchantZone, TokenError};

/// The synced copy of a ticket as the gate decides on it: the copy, the uses it does not
/// show yet (Unix seconds), the merchant's time zone the feed named, and for an entry at
/// the venue its presence and occupancy.
#[derive(Clone, Copy)]
struct SyncedCopy<'a> {
    ticket: &'a SyncedTicket,
    unsynced: &'a [i64],
    zone: MerchantZone,
    venue: Option<&'a VenueSnapshot>,
}

/// What the store holds for deciding one ticket on its copy.
struct CopyRead {
    ticket: Option<SyncedTicket>,
    unsynced: Vec<i64>,
    zone: MerchantZone,
    last_sync: Option<String>,
    /// The venue, when the scan is one of its passages.
    venue: Option<VenueRecords>,
}

impl CopyRead {
    fn read(
        store: &Store,
        ticket_code: &str,
        function_code: &FunctionCode,
        direction: Direction,
        since_local: i64,
    ) -> Result<CopyRead, StoreError> {
        let ticket = store.ticket(ticket_code)?;
        let unsynced =
            store.uses_not_in_copy(ticket_code, function_code.as_str(), ticket.as_ref())?;
        Ok(CopyRead {
            unsynced,
            zone: store.merchant_zone()?,
            last_sync: store.get_state("last_ticket_sync_at")?,
            venue: VenueRecords::read(store, ticket_code, function_code, direction, since_local)?,
            ticket,
        })
    }

    /// The snapshot an entry at the venue is decided on (`None` for any other scan).
    fn entry_snapshot(&self, clock: &VenueClock, direction: Direction) -> Option<VenueSnapshot> {
        let records = self
            .venue
            .as_ref()
            .filter(|_| direction == Direction::Entry)?;
        let synced = self.ticket.as_ref().and_then(|t| t.passage);
        Some(records.snapshot(synced, clock))
    }
}

impl Gate {
    /// Decides one decoded code, end to end: the stages decide, then the one place below
    /// records and shows the result.
    pub async fn decide_code(self: &Arc<Self>, text: &str, origin: Origin) -> GateDecision {
        let started = match origin {
            Origin::Capture { captured_at } => captured_at,
            Origin::Request => Instant::now(),
        };
        if let Ok(mut display) = self.display.lock() {
            display.checking();
        }
        let function_code = self.function_code();
        let scan_id = uuid::Uuid::new_v4().to_string();
        let staged = self
            .decide_stages(text, &function_code, &scan_id, origin, started)
            .await;
        let decision = match staged {
            Ok(Staged::Repeat(decision)) => decision,
            Ok(Staged::Decided(outcome)) => {
                self.record_and_show(outcome, scan_id, &function_code, text, started)
                    .await
            }
            Err(error) => {
                // A store read failed: nothing can be decided offline, nothing is green.
                self.store_result::<()>(&Err(error));
                self.shown(
                    scan_id,
                    &Outcome::local(ApiCode::StoreFailed),
                    &function_code,
                    started,
                )
            }
        };
        if matches!(origin, Origin::Capture { .. }) && !decision.repeated {
            if let Some(jti) = &decision.jti {
                if let Ok(mut debounce) = self.debounce.lock() {
                    debounce.retain(|_, (at, _)| at.elapsed() < self.config.debounce);
                    debounce.insert(
                        (jti.clone(), function_code.to_string()),
                        (Instant::now(), decision.clone()),
                    );
                }
            }
        }
        if let Ok(mut display) = self.display.lock() {
            display.decided(decision.clone());
        }
        decision
    }

    /// Records the outcome, then shows it. A decision the central made is shown as the
    /// central made it, whether or not the store took it (the failure is an alarm); one this
    /// gate made alone is shown only once it is durable, so nothing is green offline unless
    /// it was recorded first.
    async fn record_and_show(
        self: &Arc<Self>,
        outcome: Outcome,
        scan_id: String,
        function_code: &FunctionCode,
        text: &str,
        started: Instant,
    ) -> GateDecision {
        let mut decision = self.shown(scan_id, &outcome, function_code, started);
        let recorded = self.record(&decision, &outcome).await;
        self.store_result(&recorded);
        if recorded.is_err() && decision.mode != Mode::Online {
            let refused = Outcome {
                code: ApiCode::StoreFailed,
                ..outcome
            };
            decision = self.shown(decision.scan_id.clone(), &refused, function_code, started);
        }
        // From the code to the decision committed (the stored record cannot include its own
        // commit; the returned decision and the histogram do).
        decision.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.metrics.latency.observe(decision.latency_ms / 1000.0);
        self.metrics
            .decisions
            .get_or_create(&vec![
                ("code".to_owned(), decision.code.as_str().to_owned()),
                ("mode".to_owned(), decision.mode.as_str().to_owned()),
            ])
            .inc();
        tracing::info!(
            decision = decision.code.as_str(),
            mode = decision.mode.as_str(),
            latency_ms = decision.latency_ms,
            device = %self.config.device_id,
            ticket = decision.ticket.as_deref().unwrap_or("-"),
            chars = text.len(),
            "scan decided"
        );
        decision
    }

    fn shown(
        &self,
        scan_id: String,
        outcome: &Outcome,
        function_code: &FunctionCode,
        started: Instant,
    ) -> GateDecision {
        GateDecision {
            scan_id,
            code: outcome.code,
            message: outcome.code.message(Lang::ZhCn).to_owned(),
            mode: outcome.mode,
            ticket: outcome.ticket.as_deref().map(mask_ticket_code),
            jti: outcome.claims.as_ref().map(|c| c.jti.to_string()),
            entitlements: outcome.entitlements.clone(),
            function_code: function_code.to_string(),
            decided_at: now_rfc3339(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            repeated: false,
            accepted_at: outcome.peer.clone(),
            direction: self.direction(),
            reentry: outcome.code == ApiCode::Success
                && self.direction() == Direction::Entry
                && outcome.passage.is_some()
                && !outcome.redeemed,
        }
    }

    async fn record(
        self: &Arc<Self>,
        decision: &GateDecision,
        outcome: &Outcome,
    ) -> Result<(), StoreError> {
        let success = decision.code == ApiCode::Success;
        let upload = decision.mode == Mode::Offline && success;
        // An online success keeps its token, held: if the central's database is replaced
        // (restored, a standby promoted) it may be gone, and it is uploaded again.
        let hold = decision.mode == Mode::Online && success && outcome.upload_token.is_some();
        let claims = outcome.claims.as_ref();
        let record = DecisionRecord {
            scan_id: decision.scan_id.clone(),
            jti: claims.map(|c| c.jti.to_string()),
            ticket_code: claims.map(|c| c.tid.clone()),
            function_code: decision.function_code.clone(),
            code: decision.code.as_str().to_owned(),
            mode: decision.mode,
            decided_at: decision.decided_at.clone(),
            latency_ms: decision.latency_ms,
            qr_token: (upload || hold).then(|| outcome.upload_token.clone().unwrap_or_default()),
            operator_id: outcome.operator_id,
            upload_state: if upload {
                Some("pending".to_owned())
            } else if hold {
                Some(crate::store::HELD.to_owned())
            } else {
                None
            },
            upload_code: None,
            peer_device: outcome.peer.clone(),
            direction: self.direction(),
            occupancy_change: outcome
                .passage
                .filter(|_| decision.code == ApiCode::Success),
            redeemed: outcome.redeemed,
        };
        let announce = self.announcement(decision, outcome);
        let message = self
            .with_store(move |store| {
                store.record_announced(
                    &record,
                    announce.as_ref().map(|a| a as &dyn Fn(u64) -> String),
                )
            })
            .await?;
        // Only once it is durable does an acceptance go to the peers.
        if let (Some(peers), Some(message)) = (&self.peers, message) {
            peers.push(message);
        }
        Ok(())
    }

    /// For a success that redeemed or passed the venue, with peers on: what signs its entry
    /// of this gate's peer log (a redemption blocks the pair at the peers; a passage, an exit
    /// or a re-entry included, moves their presence and occupancy).
    fn announcement(
        &self,
        decision: &GateDecision,
        outcome: &Outcome,
    ) -> Option<impl Fn(u64) -> String + Send + 'static> {
        if !outcome.redeemed && outcome.passage.is_none() {
            return None;
        }
        let peers = self.peers.as_ref()?;
        let claims = outcome.claims.as_ref()?;
        let mode = match (decision.code, decision.mode) {
            (ApiCode::Success, Mode::Online) => stile_shared::peer::AcceptMode::Online,
            (ApiCode::Success, Mode::Offline) => stile_shared::peer::AcceptMode::Offline,
            _ => return None,
        };
        let (Ok(merchant), Ok(ticket), Ok(function_code)) = (
            stile_shared::Identifier::parse(&claims.mid),
            stile_shared::Identifier::parse(&claims.tid),
            FunctionCode::parse(&decision.function_code),
        ) else {
            tracing::warn!(ticket = %mask_ticket_code(&claims.tid), "acceptance not announced: its codes do not fit the peer protocol");
            return None;
        };
        // A venue code that does not fit the protocol is left out: the peers then count the
        // passage as an entry of no venue (the safe side for a capacity).
        let venue = outcome
            .passage
            .and(outcome.venue.as_deref())
            .and_then(|code| stile_shared::Identifier::parse(code).ok());
        Some(peers.announcement(Announced {
            merchant,
            jti: claims.jti.clone(),
            function_code,
            ticket,
            decided_at: decision.decided_at.clone(),
            mode,
            direction: decision.direction,
            redeemed: outcome.redeemed,
            occupancy_change: venue.as_ref().and(outcome.passage),
            venue,
        }))
    }

    /// Verify → debounce → session → token checks → local block → online → lookup →
    /// offline. Each stage either answers or hands on.
    async fn decide_stages(
        self: &Arc<Self>,
        text: &str,
        function_code: &FunctionCode,
        scan_id: &str,
        origin: Origin,
        started: Instant,
    ) -> Result<Staged, StoreError> {
        let keys = self.keys.read().map(|k| k.0.clone()).unwrap_or_default();
        let token = text.trim();
        // (With no keys at all, every well-formed token names an unknown kid.)
        let claims = match verify(token, &keys) {
            Ok(verified) => verified.claims,
            Err(error) => {
                // Without the key that signed it the gate cannot tell a good code from a bad
                // one: it says so instead of calling it invalid, and fetches the keys.
                if matches!(error, TokenError::UnknownKid) {
                    self.sync_now.notify_one();
                    return Ok(Staged::Decided(Outcome::local(
                        ApiCode::OfflineUnverifiable,
                    )));
                }
                return Ok(Staged::Decided(Outcome::local(ApiCode::InvalidQr)));
            }
        };
        if matches!(origin, Origin::Capture { .. }) {
            let key = (claims.jti.to_string(), function_code.to_string());
            if let Some(previous) = self.debounced(&key) {
                return Ok(Staged::Repeat(previous));
            }
        }
        let Some(session) = self.session() else {
            return Ok(Staged::Decided(
                Outcome::local(ApiCode::Unauthorized)
                    .about(&claims, None)
                    .showing_ticket(&claims),
            ));
        };
        let operator = Some(session.operator_id);
        let now = self.trusted_now();
        if let Err(code) = check_token(
            &claims,
            &session.merchant_code,
            now,
            self.config.token_policy,
        ) {
            return Ok(Staged::Decided(
                Outcome::local(code.into()).about(&claims, operator),
            ));
        }
        // Acceptances of this pair, this gate's own or a peer's: the central may not have
        // them yet (offline ones wait for upload), so such a pair is decided on the synced
        // copy with them, by the shared function and in its order of checks (a ticket that
        // left the venue may re-enter); only its ALREADY_REDEEMED is answered here, anything
        // else goes on to the central. (An exit redeems nothing: it has no such stage.)
        let direction = self.direction();
        let (accepted, read) = if direction == Direction::Entry {
            let (jti, function, ticket_code) = (
                claims.jti.to_string(),
                function_code.clone(),
                claims.tid.clone(),
            );
            let since = self.venue_clock(MerchantZone::default()).since_local();
            self.with_store(move |store| {
                let Some(accepted) = store.accepted_by(&jti, function.as_str())? else {
                    return Ok((None, None));
                };
                let read = CopyRead::read(store, &ticket_code, &function, direction, since)?;
                Ok((Some(accepted), Some(read)))
            })
            .await?
        } else {
            (None, None)
        };
        if let (Some(by), Some(read)) = (&accepted, &read) {
            let clock = self.venue_clock(read.zone);
            let snapshot = read.entry_snapshot(&clock, direction);
            let verdict = read.ticket.as_ref().map(|ticket| {
                let copy = SyncedCopy {
                    ticket,
                    unsynced: &read.unsynced,
                    zone: read.zone,
                    venue: snapshot.as_ref(),
                };
                self.decide_on_copy(&claims, function_code, &session, copy, true)
            });
            if verdict.is_none_or(|(verdict, _)| {
                verdict == Decision::Reject(DecisionCode::AlreadyRedeemed)
            }) {
                return Ok(Staged::Decided(
                    self.refused_as_redeemed(
                        Outcome::local(ApiCode::AlreadyRedeemed)
                            .about(&claims, operator)
                            .showing_ticket(&claims),
                        by,
                    ),
                ));
            }
        }
        if self.uplink().state.try_online() && !session.is_offline() {
            if let Some(outcome) = self
                .decide_online(token, &claims, function_code, &session, scan_id, started)
                .await
            {
                return Ok(Staged::Decided(outcome));
            }
        }
        self.decide_offline(token, &claims, function_code, &session, accepted.as_ref())
            .await
            .map(Staged::Decided)
    }

    /// An ALREADY_REDEEMED that rests on a peer's acceptance names that gate (and counts).
    fn refused_as_redeemed(&self, mut outcome: Outcome, by: &AcceptedBy) -> Outcome {
        if let AcceptedBy::Peer(device) = by {
            outcome.peer = Some(device.clone());
            if let Some(peers) = &self.peers {
                peers.metrics.blocks.inc();
            }
        }
        outcome
    }

    /// The central decides, within the deadline; `None` when the uplink failed (decide
    /// offline). When the request may have been applied, the scan is looked up by its
    /// scan_id with what is left of the decision budget.
    async fn decide_online(
        self: &Arc<Self>,
        token: &str,
        claims: &QrClaims,
        function_code: &FunctionCode,
        session: &OperatorSession,
        scan_id: &str,
        started: Instant,
    ) -> Option<Outcome> {
        let request = ScanRequest {
            qr_token: token.to_owned(),
            function_code: function_code.clone(),
            venue_code: self.config.venue_code.clone(),
            device_id: self.config.device_id.clone(),
            scan_id: Some(scan_id.to_owned()),
            direction: self.direction(),
        };
        let operator = Some(session.operator_id);
        let token = session.token.as_deref()?;
        let answer = match self
            .central
            .scan(token, &request, self.config.online_deadline)
            .await
        {
            Ok((answer, sample)) => {
                self.link_ok(Some(sample));
                Ok(answer)
            }
            Err(error) => {
                self.link_failed(&error);
                let left = DECISION_BUDGET.saturating_sub(started.elapsed());
                if error.outcome_unknown() && left >= Duration::from_millis(50) {
                    match self.central.scan_by_id(token, scan_id, left).await {
                        Ok(Some(answer)) => {
                            self.link_ok(None);
                            Ok(answer)
                        }
                        _ => Err(error),
                    }
                } else {
                    Err(error)
                }
            }
        };
        let online = |code: ApiCode| {
            Outcome::local(code)
                .in_mode(Mode::Online)
                .about(claims, operator)
                .showing_ticket(claims)
        };
        match answer {
            Ok(answer) => {
                let mut outcome = online(answer.code.into());
                if outcome.code == ApiCode::Success {
                    outcome.upload_token = Some(request.qr_token.clone());
                    (outcome.passage, outcome.redeemed, outcome.venue) =
                        self.online_passage(claims, function_code, &answer).await;
                }
                outcome.entitlements = answer
                    .ticket
                    .map(|t: TicketView| t.entitlements)
                    .unwrap_or_default();
                Some(outcome)
            }
            Err(CallError::Unauthorized) => {
                self.set_session(None);
                Some(online(ApiCode::Unauthorized))
            }
            Err(error) if !error.is_uplink_failure() => {
                // The central refused the request itself (e.g. this device is not bound to
                // the venue): a configuration problem, shown as such.
                tracing::warn!(error = %error, device = %self.config.device_id, "central refused the scan request");
                Some(online(ApiCode::Forbidden))
            }
            Err(_) => None,
        }
    }

    /// What a success the central decided did at the venue: its occupancy change (from the
    /// ticket's presence as this gate knows it), whether it used a count (an exit never
    /// does; an entry at the venue did when the central answered with a redemption, a
    /// re-entry has none) and the venue's code.
    async fn online_passage(
        self: &Arc<Self>,
        claims: &QrClaims,
        function_code: &FunctionCode,
        answer: &ScanResponse,
    ) -> (Option<i64>, bool, Option<String>) {
        let direction = self.direction();
        if direction == Direction::Exit {
            // The venue's code is for the peers' announcement only.
            let code = match &self.peers {
                Some(_) => {
                    let venue = self.with_store(|store| store.venue()).await;
                    self.store_result(&venue);
                    venue.ok().flatten().map(|v| v.venue_code)
                }
                None => None,
            };
            return (Some(-1), false, code);
        }
        let (ticket_code, function) = (claims.tid.clone(), function_code.clone());
        let since = self.venue_clock(MerchantZone::default()).since_local();
        let read = self
            .with_store(move |store| {
                CopyRead::read(store, &ticket_code, &function, direction, since)
            })
            .await;
        match read {
            Ok(read) => {
                let clock = self.venue_clock(read.zone);
                match read.entry_snapshot(&clock, direction) {
                    Some(snapshot) => (
                        Some(venue::occupancy_change(direction, &snapshot)),
                        answer.redemption.is_some(),
                        read.venue.map(|records| records.venue.venue_code),
                    ),
                    None => (None, true, None),
                }
            }
            Err(error) => {
                // The central's decision stands; only this gate's estimate misses it.
                self.store_result::<()>(&Err(error));
                (None, true, None)
            }
        }
    }

    /// Now, on the central's clock when the offset is known.
    fn trusted_now(&self) -> i64 {
        Utc::now().timestamp() + self.clock_offset()
    }

    /// Central minus local, whole seconds (0 while unknown).
    fn clock_offset(&self) -> i64 {
        self.uplink().clock_offset_secs.unwrap_or(0.0).round() as i64
    }

    /// The clock the venue is read by, now.
    pub(crate) fn venue_clock(&self, zone: MerchantZone) -> VenueClock {
        VenueClock {
            now: self.trusted_now(),
            offset: self.clock_offset(),
            zone,
        }
    }

    async fn decide_offline(
        self: &Arc<Self>,
        token: &str,
        claims: &QrClaims,
        function_code: &FunctionCode,
        session: &OperatorSession,
        accepted: Option<&AcceptedBy>,
    ) -> Result<Outcome, StoreError> {
        let direction = self.direction();
        let (ticket_code, function) = (claims.tid.clone(), function_code.clone());
        let since = self.venue_clock(MerchantZone::default()).since_local();
        let read = self
            .with_store(move |store| {
                CopyRead::read(store, &ticket_code, &function, direction, since)
            })
            .await?;
        let operator = Some(session.operator_id);
        let offline = |code: ApiCode| offline_outcome(code, claims, operator);
        let policy = &self.config.offline;
        let state_age = super::gate::age_secs(read.last_sync.as_deref());
        let clock_trusted = self
            .uplink()
            .clock_offset_secs
            .is_some_and(|offset| offset.abs() <= policy.max_clock_offset_secs as f64);
        let channel_allowed = match claims.ch {
            Channel::MiniApp => policy.allow_miniapp,
            Channel::Ota => policy.allow_ota,
        };
        let fresh =
            state_age.is_some_and(|age| age >= 0 && age as u64 <= policy.max_state_age_secs);
        let resynced = !self.awaiting_resync();
        let Some(ticket) = read
            .ticket
            .as_ref()
            .filter(|_| fresh && clock_trusted && channel_allowed && resynced)
        else {
            return Ok(offline(ApiCode::OfflineUnverifiable));
        };
        let clock = self.venue_clock(read.zone);
        if direction == Direction::Exit {
            return Ok(self.exit_offline(
                token,
                claims,
                function_code,
                session,
                &read,
                ticket,
                &clock,
            ));
        }
        let venue = read.entry_snapshot(&clock, direction);
        let copy = SyncedCopy {
            ticket,
            unsynced: &read.unsynced,
            zone: read.zone,
            venue: venue.as_ref(),
        };
        let (verdict, snapshot) =
            self.decide_on_copy(claims, function_code, session, copy, accepted.is_some());
        // Whether there is room is known only from a recent enough figure: an entry that
        // would take a place (or be refused for the lack of one) on an older figure is
        // unverifiable. Every other refusal stands whatever the occupancy.
        let room_unknown =
            read.venue
                .as_ref()
                .zip(venue.as_ref())
                .is_some_and(|(records, snapshot)| {
                    snapshot.capacity.is_some()
                        && snapshot.takes_place()
                        && !records.figure_is_fresh(&clock, policy.occupancy_max_age_secs)
                });
        if room_unknown
            && matches!(
                verdict,
                Decision::Redeem { .. }
                    | Decision::Reenter { .. }
                    | Decision::Reject(DecisionCode::VenueFull)
            )
        {
            return Ok(offline(ApiCode::OfflineUnverifiable));
        }
        let code: ApiCode = verdict.code().into();
        let mut outcome = offline(code);
        if let (ApiCode::AlreadyRedeemed, Some(by)) = (code, accepted) {
            outcome = self.refused_as_redeemed(outcome, by);
        }
        outcome.entitlements = ticket.entitlements.clone();
        for (entitlement, remaining) in outcome
            .entitlements
            .iter_mut()
            .zip(remaining_after(&snapshot, verdict))
        {
            entitlement.remaining_uses = remaining;
        }
        if code == ApiCode::Success {
            outcome.upload_token = Some(token.to_owned());
            outcome.passage = venue
                .as_ref()
                .map(|snapshot| venue::occupancy_change(Direction::Entry, snapshot));
            outcome.venue = read
                .venue
                .as_ref()
                .map(|records| records.venue.venue_code.clone());
            outcome.redeemed = matches!(verdict, Decision::Redeem { .. });
        }
        Ok(outcome)
    }

    /// An exit decided on the synced copy: the shared `decide_exit` with the ticket's
    /// presence, judged on the venue's entry function. A gate whose location belongs to no
    /// venue cannot record exits (the central refuses them too): a configuration problem.
    #[allow(clippy::too_many_arguments)]
    fn exit_offline(
        &self,
        token: &str,
        claims: &QrClaims,
        function_code: &FunctionCode,
        session: &OperatorSession,
        read: &CopyRead,
        ticket: &SyncedTicket,
        clock: &VenueClock,
    ) -> Outcome {
        let operator = Some(session.operator_id);
        let offline = |code: ApiCode| offline_outcome(code, claims, operator);
        let Some(records) = &read.venue else {
            tracing::warn!(device = %self.config.device_id, "an exit gate at a location of no venue: exits cannot be recorded");
            return offline(ApiCode::Forbidden);
        };
        let presence = venue::presence(ticket.passage, &records.own, &records.peers, clock);
        let snapshot = snapshot_for_decision(ticket, function_code, &read.unsynced);
        let verdict = decide_exit(
            &DecisionInput {
                claims,
                operator_merchant: &session.merchant_code,
                ticket: Some(&snapshot),
                redeemed_with_this_jti: &[],
                function_code: &records.venue.entry_function,
                now: clock.now,
                policy: self.config.token_policy,
                zone: clock.zone,
                venue: None,
            },
            presence,
        );
        let mut outcome = offline(verdict.code().into());
        outcome.entitlements = ticket.entitlements.clone();
        for (entitlement, now) in outcome.entitlements.iter_mut().zip(&snapshot.entitlements) {
            entitlement.remaining_uses = now.remaining_uses.max(0);
        }
        if verdict == ExitDecision::Exit {
            outcome.upload_token = Some(token.to_owned());
            outcome.passage = Some(-1);
            outcome.redeemed = false;
            outcome.venue = Some(records.venue.venue_code.clone());
        }
        outcome
    }

    /// The shared decision over the synced copy of the ticket, with the acceptances the copy
    /// may not show yet applied (this gate's own and its peers'): their uses taken off the
    /// counts, and the pair counted as redeemed when this gate or a peer accepted it; for an
    /// entry at the venue, with its presence and occupancy. Returns the snapshot it decided
    /// on.
    fn decide_on_copy(
        &self,
        claims: &QrClaims,
        function_code: &FunctionCode,
        session: &OperatorSession,
        copy: SyncedCopy<'_>,
        accepted_here: bool,
    ) -> (Decision, stile_shared::TicketSnapshot) {
        let ticket = copy.ticket;
        let snapshot = snapshot_for_decision(ticket, function_code, copy.unsynced);
        let mut redeemed = if ticket.current_jti.as_ref() == Some(&claims.jti) {
            ticket.redeemed_functions.clone()
        } else {
            Vec::new()
        };
        if accepted_here && !redeemed.contains(function_code) {
            redeemed.push(function_code.clone());
        }
        let verdict = decide(&DecisionInput {
            claims,
            operator_merchant: &session.merchant_code,
            ticket: Some(&snapshot),
            redeemed_with_this_jti: &redeemed,
            function_code,
            now: self.trusted_now(),
            policy: self.config.token_policy,
            zone: copy.zone,
            venue: copy.venue,
        });
        (verdict, snapshot)
    }

    fn debounced(&self, key: &(String, String)) -> Option<GateDecision> {
        let debounce = self.debounce.lock().ok()?;
        let (at, decision) = debounce.get(key)?;
        (at.elapsed() < self.config.debounce).then(|| GateDecision {
            repeated: true,
            ..decision.clone()
        })
    }
}

/// The outcome of a decision this gate takes alone about the token's ticket.
fn offline_outcome(code: ApiCode, claims: &QrClaims, operator: Option<i64>) -> Outcome {
    Outcome::local(code)
        .in_mode(Mode::Offline)
        .about(claims, operator)
        .showing_ticket(claims)
}
