//! The live connections, as the control API and `/metrics` see them.
//!
//! Each connection task [`Registry::open`]s an entry when it starts and holds the returned [`ConnHandle`] for
//! its whole life; dropping the handle removes the entry and folds its counters into per domain pair totals,
//! so that `/metrics` keeps counting traffic of connections that have ended. The session records what it
//! learns in the entry's [`ConnState`]; the relay adds to its [`DirCounters`] once per batch and installs the
//! queues through which [`ConnEntry::inject`] hands it stanzas; the control API asks it to close through
//! [`ConnEntry::request_close`].
//!
//! This module owns the entries and the totals of ended connections. It does not relay, inject or close
//! anything itself: the session and the relay watch what is recorded here and act on it.

use super::metrics::MAX_SERIES;
use crate::side::Direction;
use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The label of connections whose domain pair did not fit under [`MAX_SERIES`].
const OTHER_PAIR: &str = "other";

/// Locks `mutex`, ignoring poisoning: every critical section here leaves its data consistent (plain inserts,
/// removals and additions), so a panic elsewhere while holding the lock leaves nothing half done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Index of a direction in the `[up, down]` arrays of this module.
fn index(dir: Direction) -> usize {
    match dir {
        Direction::Up => 0,
        Direction::Down => 1,
    }
}

/// The live connections, shared as `Arc<Registry>` by the listeners, the sessions and the control API.
#[derive(Debug, Default)]
pub struct Registry {
    live: Mutex<Live>,
    /// Traffic of ended connections per domain pair, touched only when a connection ends and on a scrape.
    ended: Mutex<BTreeMap<String, [Traffic; 2]>>,
}

#[derive(Debug, Default)]
struct Live {
    entries: BTreeMap<u64, Arc<ConnEntry>>,
    /// Every listener that ever opened a connection, so that `xmpptap_connections_active` says 0 rather than
    /// nothing once its connections are gone.
    listeners: BTreeSet<&'static str>,
}

/// Stanzas and bytes relayed in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Traffic {
    pub(super) stanzas: u64,
    pub(super) bytes: u64,
}

impl Traffic {
    fn add(&mut self, other: Traffic) {
        self.stanzas = self.stanzas.saturating_add(other.stanzas);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// What `/metrics` reads from the registry in one go.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// Live connections per listener (0 for listeners whose connections have all ended).
    pub(super) active: BTreeMap<&'static str, u64>,
    /// Traffic `[up, down]` per domain pair, of live and ended connections, at most [`MAX_SERIES`] pairs plus
    /// `other`.
    pub(super) traffic: BTreeMap<String, [Traffic; 2]>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers connection `conn`, accepted by `listener` (`"s2s"` or `"c2s"`) from `peer`. The entry leaves
    /// the registry when the returned handle drops, and its counters are folded into the totals kept for
    /// `/metrics`. Connection ids are unique; should one be reused while its entry is live, the new entry
    /// replaces the old in [`Registry::get`] and [`Registry::list`].
    pub fn open(
        self: &Arc<Self>,
        conn: u64,
        listener: &'static str,
        peer: SocketAddr,
    ) -> ConnHandle {
        let entry = Arc::new(ConnEntry {
            conn,
            listener,
            peer,
            started: SystemTime::now(),
            opened: Instant::now(),
            counters: Default::default(),
            close: CancellationToken::new(),
            state: Mutex::default(),
            injectors: Mutex::default(),
            close_request: Mutex::default(),
        });
        let mut live = lock(&self.live);
        live.entries.insert(conn, Arc::clone(&entry));
        live.listeners.insert(listener);
        drop(live);
        ConnHandle {
            entry,
            registry: Arc::clone(self),
        }
    }

    /// The live connection `conn`, if any.
    pub fn get(&self, conn: u64) -> Option<Arc<ConnEntry>> {
        lock(&self.live).entries.get(&conn).cloned()
    }

    /// What the control API shows of every live connection, sorted by connection id.
    pub fn list(&self) -> Vec<ConnectionInfo> {
        let entries: Vec<Arc<ConnEntry>> = lock(&self.live).entries.values().cloned().collect();
        entries.iter().map(|entry| entry.info()).collect()
    }

    /// Live connections per listener and traffic per domain pair, for `/metrics`.
    pub(super) fn snapshot(&self) -> Snapshot {
        let (entries, mut active) = {
            let live = lock(&self.live);
            let active: BTreeMap<&'static str, u64> = live
                .listeners
                .iter()
                .map(|listener| (*listener, 0))
                .collect();
            (live.entries.values().cloned().collect::<Vec<_>>(), active)
        };
        let mut traffic = lock(&self.ended).clone();
        for entry in &entries {
            *active.entry(entry.listener).or_default() += 1;
            let totals = bounded_pair(&mut traffic, entry.pair());
            for dir in [Direction::Up, Direction::Down] {
                totals[index(dir)].add(entry.counters[index(dir)].traffic());
            }
        }
        Snapshot { active, traffic }
    }

    /// Folds the counters of an ended connection into the totals and forgets it.
    fn close(&self, entry: &Arc<ConnEntry>) {
        {
            let mut live = lock(&self.live);
            // A reused id may have replaced this entry; leave the newer one alone.
            if live
                .entries
                .get(&entry.conn)
                .is_some_and(|current| Arc::ptr_eq(current, entry))
            {
                live.entries.remove(&entry.conn);
            }
        }
        let pair = entry.pair();
        let mut ended = lock(&self.ended);
        let totals = bounded_pair(&mut ended, pair);
        for dir in [Direction::Up, Direction::Down] {
            totals[index(dir)].add(entry.counters[index(dir)].traffic());
        }
    }
}

/// The totals of `pair` in `map`, or those of `other` when `map` already holds [`MAX_SERIES`] other pairs.
fn bounded_pair(map: &mut BTreeMap<String, [Traffic; 2]>, pair: String) -> &mut [Traffic; 2] {
    let key = if map.len() >= MAX_SERIES && !map.contains_key(&pair) {
        OTHER_PAIR.to_owned()
    } else {
        pair
    };
    map.entry(key).or_default()
}

/// A connection's place in the [`Registry`], held by its task: dropping it removes the entry and folds its
/// counters into the totals. Dereferences to the [`ConnEntry`].
#[derive(Debug)]
pub struct ConnHandle {
    entry: Arc<ConnEntry>,
    registry: Arc<Registry>,
}

impl ConnHandle {
    /// The entry, to share with the parts of the session that outlive a borrow of the handle (the relay).
    pub fn entry(&self) -> &Arc<ConnEntry> {
        &self.entry
    }
}

impl std::ops::Deref for ConnHandle {
    type Target = ConnEntry;

    fn deref(&self) -> &ConnEntry {
        &self.entry
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.registry.close(&self.entry);
    }
}

/// One live connection: what is known about it, its counters, and the ways to act on it.
#[derive(Debug)]
pub struct ConnEntry {
    /// The connection id, as in logs and the transcript.
    pub conn: u64,
    /// The listener that accepted it: `"s2s"` or `"c2s"`.
    pub listener: &'static str,
    /// The initiator's address.
    pub peer: SocketAddr,
    /// When the connection was accepted.
    pub started: SystemTime,
    /// `started` on the monotonic clock, for ages.
    opened: Instant,
    /// Per direction `[up, down]`: stanzas and bytes relayed, updated by the relay once per batch (Relaxed
    /// atomics).
    pub counters: [DirCounters; 2],
    /// Cancelled to close the connection (the session watches it); [`ConnEntry::close_request`] says how.
    pub close: CancellationToken,
    state: Mutex<ConnState>,
    /// The relay's injection queues `[up, down]`, while it runs.
    injectors: Mutex<Option<[mpsc::Sender<Injection>; 2]>>,
    close_request: Mutex<Option<CloseRequest>>,
}

impl ConnEntry {
    /// Records what the session has learnt (`f` runs under the entry's lock: keep it short).
    pub fn update(&self, f: impl FnOnce(&mut ConnState)) {
        f(&mut lock(&self.state));
    }

    /// A copy of what is known about the connection.
    pub fn state(&self) -> ConnState {
        lock(&self.state).clone()
    }

    /// The relay installs its two injection queues `[up, down]` when it starts, and removes them (`None`)
    /// when it ends.
    pub fn set_injectors(&self, injectors: Option<[mpsc::Sender<Injection>; 2]>) {
        *lock(&self.injectors) = injectors;
    }

    /// Queues `xml` (one whole element, already checked) to be sent in direction `dir`, as from the control
    /// API. Fails if the connection is not relaying (yet or any more), or if the queue, whose capacity the
    /// relay chose, is full.
    pub fn inject(&self, dir: Direction, xml: Bytes) -> Result<(), InjectError> {
        self.inject_as(dir, xml, InjectOrigin::Control)
    }

    /// Like [`ConnEntry::inject`], saying who asks (a rule, the pinger).
    pub fn inject_as(
        &self,
        dir: Direction,
        xml: Bytes,
        origin: InjectOrigin,
    ) -> Result<(), InjectError> {
        let sender = lock(&self.injectors)
            .as_ref()
            .map(|queues| queues[index(dir)].clone())
            .ok_or(InjectError::NotRelaying)?;
        sender
            .try_send(Injection { xml, origin })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => InjectError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => InjectError::NotRelaying,
            })
    }

    /// Asks the session to close the connection: records the request, then cancels [`ConnEntry::close`].
    /// The first request wins; later ones only cancel again.
    pub fn request_close(&self, request: CloseRequest) {
        lock(&self.close_request).get_or_insert(request);
        self.close.cancel();
    }

    /// The close request, once [`ConnEntry::close`] is cancelled through [`ConnEntry::request_close`].
    pub fn close_request(&self) -> Option<CloseRequest> {
        lock(&self.close_request).clone()
    }

    /// What the control API shows of the connection.
    pub fn info(&self) -> ConnectionInfo {
        let [up, down] = [&self.counters[0], &self.counters[1]].map(DirCounters::traffic);
        ConnectionInfo {
            conn: self.conn,
            listener: self.listener,
            peer: self.peer,
            started: rfc3339(self.started),
            age_ms: u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            state: self.state(),
            counters: CounterInfo {
                stanzas_up: up.stanzas,
                stanzas_down: down.stanzas,
                bytes_up: up.bytes,
                bytes_down: down.bytes,
            },
        }
    }

    /// The `pair` label: `initiator->receiver`, each `?` while unknown.
    fn pair(&self) -> String {
        let state = lock(&self.state);
        format!(
            "{}->{}",
            state.initiator.as_deref().unwrap_or("?"),
            state.receiver.as_deref().unwrap_or("?")
        )
    }
}

/// `time` as RFC 3339 in UTC (`?` for a time `time` cannot format, before year 0 or after 9999).
fn rfc3339(time: SystemTime) -> String {
    time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| String::from("?"))
}

/// Stanzas and bytes relayed in one direction.
#[derive(Debug, Default)]
pub struct DirCounters {
    /// Stanzas (and other frames) relayed.
    pub stanzas: AtomicU64,
    /// Bytes relayed.
    pub bytes: AtomicU64,
}

impl DirCounters {
    /// Adds a batch: `stanzas` frames holding `bytes` bytes.
    pub fn add(&self, stanzas: u64, bytes: u64) {
        self.stanzas.fetch_add(stanzas, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn traffic(&self) -> Traffic {
        Traffic {
            stanzas: self.stanzas.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Stream headers, features, STARTTLS, dialback or SASL: nothing can be injected yet.
    #[default]
    Negotiating,
    /// Both streams are up and stanzas flow.
    Relaying,
    /// One side has closed, or xmpptap is closing.
    Closing,
}

/// What the session has learnt about a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConnState {
    /// Where the connection is in its life.
    pub phase: Phase,
    /// The initiator's domain (the `from` of its stream header, or what authenticated).
    pub initiator: Option<String>,
    /// The receiver's domain (the `to` of the initiator's stream header).
    pub receiver: Option<String>,
    /// Whether TLS is up `[initiator leg, receiver leg]`; shown as `{"initiator": .., "receiver": ..}`.
    #[serde(serialize_with = "serialize_tls")]
    pub tls: [bool; 2],
    /// The dialback result: `valid`, `invalid` or `error`.
    pub dialback: Option<String>,
    /// The SASL outcome: `success` or `failure`.
    pub sasl: Option<String>,
    /// Whether stream management (XEP-0198) is enabled.
    pub sm: bool,
    /// The receiver's address, once connected.
    pub upstream: Option<SocketAddr>,
}

fn serialize_tls<S: Serializer>(tls: &[bool; 2], serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Tls {
        initiator: bool,
        receiver: bool,
    }
    Tls {
        initiator: tls[0],
        receiver: tls[1],
    }
    .serialize(serializer)
}

/// A stanza for the relay to send on its own.
#[derive(Clone, Debug)]
pub struct Injection {
    /// One whole element, sent as is.
    pub xml: Bytes,
    /// Who asked, for the transcript.
    pub origin: InjectOrigin,
}

/// Who asked for an [`Injection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InjectOrigin {
    /// The control API.
    Control,
    /// The rule of this name.
    Rule(String),
    /// The pinger measuring round trips.
    Ping,
}

/// Why an injection was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// The relay is not running: the connection is still negotiating, or is ending.
    #[error("the connection is not relaying")]
    NotRelaying,
    /// The relay has not yet taken the stanzas queued before.
    #[error("the injection queue is full")]
    QueueFull,
}

/// How the control API asks a session to close its connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    /// A stream error condition (RFC 6120 4.9.3) to send both sides; `None` closes cleanly with
    /// `</stream:stream>` to both.
    pub condition: Option<String>,
    /// Text to send inside the stream error.
    pub text: Option<String>,
}

/// What the control API shows of a live connection.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionInfo {
    /// The connection id.
    pub conn: u64,
    /// The listener that accepted it: `s2s` or `c2s`.
    pub listener: &'static str,
    /// The initiator's address.
    pub peer: SocketAddr,
    /// When it was accepted, RFC 3339 in UTC.
    pub started: String,
    /// How long ago it was accepted, in milliseconds.
    pub age_ms: u64,
    /// What the session knows about it (fields flattened into this object).
    #[serde(flatten)]
    pub state: ConnState,
    /// Traffic so far.
    pub counters: CounterInfo,
}

/// The counters of a [`ConnectionInfo`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterInfo {
    /// Stanzas relayed from the initiator to the receiver.
    pub stanzas_up: u64,
    /// Stanzas relayed from the receiver to the initiator.
    pub stanzas_down: u64,
    /// Bytes relayed from the initiator to the receiver.
    pub bytes_up: u64,
    /// Bytes relayed from the receiver to the initiator.
    pub bytes_down: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 5269))
    }

    #[test]
    fn handle_drop_removes_entry_and_folds_counters() {
        let registry = Arc::new(Registry::new());
        let handle = registry.open(7, "s2s", peer());
        handle.update(|state| {
            state.initiator = Some("a.example".into());
            state.receiver = Some("b.example".into());
        });
        handle.counters[0].add(2, 100);
        handle.counters[1].add(1, 40);
        assert_eq!(registry.list().len(), 1);
        let live = registry.snapshot();
        assert_eq!(live.active.get("s2s"), Some(&1));
        drop(handle);
        assert!(registry.get(7).is_none());
        assert!(registry.list().is_empty());
        let ended = registry.snapshot();
        assert_eq!(ended.active.get("s2s"), Some(&0));
        assert_eq!(ended.traffic, live.traffic);
        let totals = ended.traffic["a.example->b.example"];
        assert_eq!(
            totals,
            [
                Traffic {
                    stanzas: 2,
                    bytes: 100
                },
                Traffic {
                    stanzas: 1,
                    bytes: 40
                }
            ]
        );
    }

    #[test]
    fn list_is_sorted_and_serializes_state() {
        let registry = Arc::new(Registry::new());
        let _b = registry.open(9, "c2s", peer());
        let a = registry.open(3, "s2s", peer());
        a.update(|state| {
            state.phase = Phase::Relaying;
            state.tls = [true, false];
        });
        let list = registry.list();
        assert_eq!(list.iter().map(|c| c.conn).collect::<Vec<_>>(), [3, 9]);
        let json = serde_json::to_value(&list[0]).expect("serializes");
        assert_eq!(json["phase"], "relaying");
        assert_eq!(json["tls"]["initiator"], true);
        assert_eq!(json["tls"]["receiver"], false);
        assert_eq!(json["peer"], "192.0.2.1:5269");
        assert_eq!(json["counters"]["bytes_up"], 0);
        assert!(json["started"].as_str().is_some_and(|s| s.ends_with('Z')));
    }

    #[test]
    fn inject_needs_a_relay_and_room() {
        let registry = Arc::new(Registry::new());
        let handle = registry.open(1, "s2s", peer());
        let xml = Bytes::from_static(b"<message/>");
        assert_eq!(
            handle.inject(Direction::Up, xml.clone()),
            Err(InjectError::NotRelaying)
        );
        let (up, mut up_rx) = mpsc::channel(1);
        let (down, _down_rx) = mpsc::channel(1);
        handle.set_injectors(Some([up, down]));
        assert_eq!(handle.inject(Direction::Up, xml.clone()), Ok(()));
        assert_eq!(
            handle.inject(Direction::Up, xml.clone()),
            Err(InjectError::QueueFull)
        );
        let got = up_rx.try_recv().map(|i| (i.xml, i.origin)).ok();
        assert_eq!(got, Some((xml.clone(), InjectOrigin::Control)));
        handle.set_injectors(None);
        assert_eq!(
            handle.inject(Direction::Down, xml),
            Err(InjectError::NotRelaying)
        );
    }

    #[test]
    fn first_close_request_wins() {
        let registry = Arc::new(Registry::new());
        let handle = registry.open(1, "s2s", peer());
        assert!(!handle.close.is_cancelled());
        let first = CloseRequest {
            condition: Some("policy-violation".into()),
            text: None,
        };
        handle.request_close(first.clone());
        handle.request_close(CloseRequest::default());
        assert!(handle.close.is_cancelled());
        assert_eq!(handle.close_request(), Some(first));
    }

    #[test]
    fn reused_id_keeps_newer_entry() {
        let registry = Arc::new(Registry::new());
        let old = registry.open(5, "s2s", peer());
        let new = registry.open(5, "s2s", peer());
        drop(old);
        assert!(registry
            .get(5)
            .is_some_and(|entry| Arc::ptr_eq(&entry, new.entry())));
    }

    #[test]
    fn pairs_beyond_the_cap_fold_into_other() {
        let mut map = BTreeMap::new();
        for i in 0..MAX_SERIES {
            bounded_pair(&mut map, format!("{i}->x"))[0].stanzas += 1;
        }
        bounded_pair(&mut map, "new->x".into())[0].stanzas += 1;
        bounded_pair(&mut map, "0->x".into())[0].stanzas += 1;
        assert_eq!(map.len(), MAX_SERIES + 1);
        assert_eq!(map[OTHER_PAIR][0].stanzas, 1);
        assert_eq!(map["0->x"][0].stanzas, 2);
    }
}
