//! The outgoing side of the peer protocol.
//!
//! - Push: every durable acceptance goes to a fan-out task, which hands it to one bounded
//!   queue per peer; each peer's pusher sends what is queued in one request under
//!   `push_timeout`. A dead or hanging peer only fills its own queue (then announcements
//!   for it are dropped and counted); no scan ever waits for a peer.
//! - Pull (anti-entropy): every `pull_interval`, and at once at start, each peer's log is
//!   pulled from the last entry held here until caught up, so a gate that was down or cut
//!   off knows what its neighbours let in meanwhile.

use super::serve::{PullAnswer, Push, AUTH_SCHEME, MAX_PULL};
use super::{DirectoryEntry, Peers, RequestKind};
use crate::decide::Gate;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use stile_shared::Identifier;
use tokio::sync::{mpsc, watch};

/// Announcements waiting for one peer.
const PEER_QUEUE: usize = 1024;
/// Most announcements in one push.
const PUSH_BATCH: usize = 64;

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

fn url(entry: &DirectoryEntry) -> String {
    format!("http://{}/peer/v1/acceptances", entry.address.as_str())
}

/// Fans each announcement out to the current peers' queues.
pub async fn fan_out(
    peers: Arc<Peers>,
    mut announcements: mpsc::Receiver<String>,
    mut stopping: watch::Receiver<bool>,
) {
    let http = client(peers.settings.push_timeout);
    let mut queues: HashMap<Identifier, (DirectoryEntry, mpsc::Sender<String>)> = HashMap::new();
    loop {
        let message = tokio::select! {
            message = announcements.recv() => message,
            _ = stopping.changed() => None,
        };
        let Some(message) = message else { return };
        let directory = peers.directory();
        // Pushers of peers gone from the directory (or moved) end with their queue.
        queues.retain(|device, (entry, _)| directory.peers.get(device) == Some(entry));
        for (device, entry) in &directory.peers {
            let (_, queue) = queues.entry(device.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(pusher(
                    peers.clone(),
                    http.clone(),
                    device.clone(),
                    entry.clone(),
                    rx,
                ));
                (entry.clone(), tx)
            });
            if queue.try_send(message.clone()).is_err() {
                peers.metrics.dropped.inc();
            }
        }
    }
}

/// Sends one peer what is queued for it, a batch per request.
async fn pusher(
    peers: Arc<Peers>,
    http: reqwest::Client,
    device: Identifier,
    entry: DirectoryEntry,
    mut queue: mpsc::Receiver<String>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < PUSH_BATCH {
            match queue.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        let Some(signed) = peers.request(&device, RequestKind::Push) else {
            peers.contact_failed(&device, "no merchant known yet".into());
            continue;
        };
        let result = http
            .post(url(&entry))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("{AUTH_SCHEME}{signed}"),
            )
            .json(&Push { messages: batch })
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => {
                peers.contact_ok(&device, count, None);
            }
            Ok(response) => {
                // The peer refused: it does not know this gate yet (its list is older), or
                // something is wrong; its pull will ask again.
                peers.contact_failed(&device, format!("push refused: {}", response.status()));
            }
            Err(error) => peers.contact_failed(&device, describe(&error)),
        }
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "cannot connect".into()
    } else {
        error.to_string()
    }
}

/// Pulls one peer's log until caught up; returns how many new entries were taken.
pub async fn pull_once(
    gate: &Arc<Gate>,
    peers: &Arc<Peers>,
    http: &reqwest::Client,
    device: &Identifier,
    entry: &DirectoryEntry,
) -> Result<usize, String> {
    let mut taken = 0;
    loop {
        let name = device.to_string();
        let cursor = gate
            .with_store(move |store| store.peer_cursor(&name))
            .await
            .map_err(|error| error.to_string())?;
        let (log, after) = cursor.unwrap_or_default();
        let signed = peers
            .request(device, RequestKind::Pull)
            .ok_or("no merchant known yet")?;
        let response = http
            .get(url(entry))
            .query(&[
                ("log", log.as_str()),
                ("after", &after.to_string()),
                ("limit", &MAX_PULL.to_string()),
            ])
            .header(
                reqwest::header::AUTHORIZATION,
                format!("{AUTH_SCHEME}{signed}"),
            )
            .send()
            .await
            .map_err(|error| describe(&error))?;
        if !response.status().is_success() {
            return Err(format!("pull refused: {}", response.status()));
        }
        let answer: PullAnswer = response
            .json()
            .await
            .map_err(|error| format!("pull answer: {error}"))?;
        if answer.device != device.as_str() {
            return Err(format!(
                "{} answered in the name of {}",
                entry.address.as_str(),
                answer.device
            ));
        }
        let count = answer.messages.len();
        let start = if answer.log == log { after } else { 0 };
        let (peers2, device2) = (peers.clone(), device.clone());
        let answer_log = answer.log.clone();
        let (new, last, refused) = gate
            .with_store(move |store| {
                let (mut new, mut last, mut refused) = (0usize, start, false);
                for message in &answer.messages {
                    match peers2.take(store, message, &device2) {
                        // An entry of another log than the answer names is not this log's.
                        Ok((acceptance, _)) if acceptance.log.as_str() != answer_log => {
                            refused = true;
                            break;
                        }
                        Ok((acceptance, is_new)) => {
                            new += usize::from(is_new);
                            last = last.max(acceptance.seq);
                        }
                        Err(_) => {
                            refused = true;
                            break;
                        }
                    }
                }
                store.set_peer_cursor(device2.as_str(), &answer_log, last)?;
                Ok((new, last, refused))
            })
            .await
            .map_err(|error| error.to_string())?;
        taken += new;
        peers.contact_ok(device, 0, Some(answer.head));
        if refused {
            return Err("the peer's log holds a message that does not verify".into());
        }
        if count < MAX_PULL || last >= answer.head {
            return Ok(taken);
        }
    }
}

/// Pulls every peer's log every `pull_interval` (at once at start).
pub async fn pull_loop(gate: Arc<Gate>, peers: Arc<Peers>, mut stopping: watch::Receiver<bool>) {
    let http = client(peers.settings.push_timeout.max(Duration::from_secs(1)));
    loop {
        let directory = peers.directory();
        let pulls = directory.peers.iter().map(|(device, entry)| {
            let (gate, peers, http) = (gate.clone(), peers.clone(), http.clone());
            let (device, entry) = (device.clone(), entry.clone());
            async move {
                match pull_once(&gate, &peers, &http, &device, &entry).await {
                    Ok(taken) if taken > 0 => {
                        tracing::info!(peer = %device, taken, "caught up with a peer");
                    }
                    Ok(_) => {}
                    Err(error) => peers.contact_failed(&device, error),
                }
            }
        });
        tokio::select! {
            _ = futures_join(pulls) => {}
            _ = stopping.changed() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(peers.settings.pull_interval) => {}
            _ = stopping.changed() => return,
        }
    }
}

/// Runs the futures concurrently to the end.
async fn futures_join<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    for handle in handles {
        let _ = handle.await;
    }
}
