//! Connection counts: how many connections xmpptap serves at once, in all and toward each receiving domain
//! (`--max-connections`, `--max-connections-per-domain`).
//!
//! A session holds a [`Permit`] for as long as it runs: one from [`Admission::connection`] from the start, and
//! one from [`Admission::domain`] once the initiator's stream header has named the receiving domain. Dropping a
//! permit gives its place back, however the session ends. This module only counts; what a refused initiator is
//! told is the session's business.

use crate::config::ListenerKind;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A limit on connections was reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverLimit {
    /// `--max-connections`: xmpptap already serves this many connections.
    #[error("xmpptap already serves {limit} connections, its limit (--max-connections)")]
    Connections { limit: usize },
    /// `--max-connections-per-domain`: xmpptap already serves this many connections toward `domain`.
    #[error("xmpptap already serves {limit} connections to {domain}, its limit per domain (--max-connections-per-domain)")]
    Domain { domain: String, limit: usize },
}

/// The connection counters shared by every session.
#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    max_per_domain: usize,
    open: AtomicUsize,
    /// Open connections per receiving domain (lowercase) and kind; a domain without any has no entry.
    domains: Mutex<HashMap<(ListenerKind, String), usize>>,
}

impl Admission {
    /// Counters for at most `max_connections` in all and `max_per_domain` toward one domain.
    pub fn new(max_connections: usize, max_per_domain: usize) -> Self {
        Admission {
            max_connections,
            max_per_domain,
            open: AtomicUsize::new(0),
            domains: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more connection, if there is one.
    pub fn connection(&self) -> Result<Permit<'_>, OverLimit> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max_connections).then_some(open + 1)
            });
        match taken {
            Ok(_) => Ok(Permit {
                admission: self,
                domain: None,
            }),
            Err(_) => Err(OverLimit::Connections {
                limit: self.max_connections,
            }),
        }
    }

    /// A place for one more connection of `kind` toward `domain`, if there is one.
    pub fn domain(&self, kind: ListenerKind, domain: &str) -> Result<Permit<'_>, OverLimit> {
        let key = (kind, domain.to_ascii_lowercase());
        let mut domains = self.lock();
        let open = domains.entry(key.clone()).or_insert(0);
        if *open >= self.max_per_domain {
            return Err(OverLimit::Domain {
                domain: key.1,
                limit: self.max_per_domain,
            });
        }
        *open += 1;
        Ok(Permit {
            admission: self,
            domain: Some(key),
        })
    }

    /// Connections served now, in all.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections served now toward `domain`.
    pub fn open_to(&self, kind: ListenerKind, domain: &str) -> usize {
        let key = (kind, domain.to_ascii_lowercase());
        self.lock().get(&key).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(ListenerKind, String), usize>> {
        // A panic while holding the lock cannot leave the map inconsistent (each change is one statement).
        self.domains
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One place in a count, given back on drop.
#[derive(Debug)]
pub struct Permit<'a> {
    admission: &'a Admission,
    /// `None`: a place in the global count; else in this domain's.
    domain: Option<(ListenerKind, String)>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        match self.domain.take() {
            None => {
                self.admission.open.fetch_sub(1, Ordering::AcqRel);
            }
            Some(key) => {
                let mut domains = self.admission.lock();
                if let Some(open) = domains.get_mut(&key) {
                    *open = open.saturating_sub(1);
                    if *open == 0 {
                        domains.remove(&key);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_count_refuses_over_the_limit_and_frees_on_drop() {
        let admission = Admission::new(2, 10);
        let a = admission.connection().expect("first");
        let b = admission.connection().expect("second");
        assert_eq!(
            admission.connection().expect_err("third"),
            OverLimit::Connections { limit: 2 }
        );
        drop(a);
        let c = admission.connection().expect("a place came back");
        assert_eq!(admission.open(), 2);
        drop((b, c));
        assert_eq!(admission.open(), 0);
    }

    #[test]
    fn domains_are_counted_apart_by_name_and_kind() {
        let admission = Admission::new(100, 1);
        let b = admission
            .domain(ListenerKind::S2s, "B.test")
            .expect("b.test");
        let err = admission
            .domain(ListenerKind::S2s, "b.test")
            .expect_err("same domain, any case");
        assert_eq!(
            err,
            OverLimit::Domain {
                domain: String::from("b.test"),
                limit: 1
            }
        );
        assert!(err.to_string().contains("--max-connections-per-domain"));
        let c = admission
            .domain(ListenerKind::S2s, "c.test")
            .expect("c.test");
        let b_c2s = admission
            .domain(ListenerKind::C2s, "b.test")
            .expect("C2S apart");
        assert_eq!(admission.open_to(ListenerKind::S2s, "b.test"), 1);
        drop(b);
        assert_eq!(admission.open_to(ListenerKind::S2s, "b.test"), 0);
        assert!(admission.domain(ListenerKind::S2s, "b.test").is_ok());
        drop((c, b_c2s));
        assert!(
            admission.lock().is_empty(),
            "no entry left for idle domains"
        );
    }
}
