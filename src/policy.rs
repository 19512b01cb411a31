//! Federation policy: which remote domains may use xmpptap, and how fast each may connect and send.
//!
//! This module owns the *decision* and the per-domain rate state, and nothing else: it does no I/O, sends no
//! `<policy-violation/>`, sleeps for no delay and counts no metrics. The proxy asks [`Policy::admit`] when a
//! stream header names its domains and [`Policy::traffic`] before forwarding what a domain sent, then carries
//! out the answer (refuse with the [`Refusal`]'s text, or wait the returned duration).
//!
//! Settings come from [`PolicyArgs`] (flags) and [`FilePolicy`] (the config file's `[policy]` table), merged
//! and validated into a [`PolicyConfig`] by [`PolicyConfig::merge`]; one [`Policy`] per process is built from
//! it and shared by all sessions behind an `Arc`.
//!
//! Choices made:
//!
//! - **Patterns** are small globs ([`glob_match`]): `*` matches any run of characters, dots included, `?`
//!   exactly one; matching is case-insensitive and ignores one trailing dot. `*.example.org` matches the
//!   subdomains of `example.org` but not `example.org` itself. No regexes: a glob is what an operator expects
//!   for a domain, and the iterative matcher cannot blow up.
//! - **Allow/block** applies to every domain a stream names (`from` and `to`), so an allowlist has to list the
//!   domains on both sides of the federation xmpptap sits in. A list the chosen mode does not use is an error
//!   rather than silently ignored, except when `--policy` on the command line switched away from the config
//!   file's mode (the file's lists then belong to the file's mode).
//! - **Rates** are token buckets per remote domain, holding one rate's worth: `--rate-connections N` allows a
//!   burst of N and refills N per minute, `--rate-stanzas`/`--rate-bytes` a burst of one second's worth and
//!   refill per second.
//! - **Over a rate** with [`Exceeded::Delay`] the bucket goes into debt and the caller waits until the debt is
//!   repaid, so waits handed out one after another stay ordered and add up to the rate. With
//!   [`Exceeded::Refuse`] nothing is taken when refusing. A batch bigger than the whole bucket is never stuck:
//!   with Delay it waits for its debt; with Refuse it passes when the bucket is full and leaves it in debt.
//!   Connections over their rate are always refused: a stream header held back for long would only time out.
//! - **State is bounded**: at most [`MAX_DOMAINS`] domains are tracked. When full, domains whose buckets have
//!   refilled are forgotten first (a full bucket is the same as a fresh one, so nothing is lost); if that
//!   frees less than a tenth, the least recently seen active domains go too (they get a fresh burst).
//! - The state sits behind one `std::sync::Mutex`, held only for a few arithmetic steps and never across an
//!   `.await`; with no stanza or byte rate set, [`Policy::traffic`] does not lock at all.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most domains whose rate state is kept at once; see the module docs for what happens beyond.
pub const MAX_DOMAINS: usize = 100_000;

/// Which remote domains may use xmpptap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every domain.
    #[default]
    Open,
    /// Only domains matching an --allow pattern.
    Allowlist,
    /// Every domain except those matching a --block pattern.
    Blocklist,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Open => "open",
            Mode::Allowlist => "allowlist",
            Mode::Blocklist => "blocklist",
        })
    }
}

/// What happens when a domain sends faster than its stanza or byte rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Exceeded {
    /// Hold the domain's traffic back until it is under the rate again.
    #[default]
    Delay,
    /// Close the domain's stream with a policy-violation stream error.
    Refuse,
}

/// Federation policy flags of `xmpptap proxy`. Each overrides the same key of the config file's `[policy]`
/// table.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PolicyArgs {
    /// Which domains may use xmpptap: open (every domain, the default), allowlist (only domains matching
    /// --allow) or blocklist (every domain but those matching --block). Both domains a stream header names
    /// (from and to) are checked; a refused stream gets a policy-violation stream error.
    #[arg(long, value_enum, value_name = "MODE")]
    pub policy: Option<Mode>,

    /// Admit DOMAIN under --policy allowlist (repeatable). A pattern: * matches any run of characters (dots
    /// too), ? exactly one, case-insensitive. *.example.org matches the subdomains of example.org but not
    /// example.org itself: list both. Replaces the config file's allow list.
    #[arg(long = "allow", value_name = "DOMAIN")]
    pub allow: Vec<String>,

    /// Refuse DOMAIN under --policy blocklist (repeatable). Patterns as for --allow. Replaces the config
    /// file's block list.
    #[arg(long = "block", value_name = "DOMAIN")]
    pub block: Vec<String>,

    /// At most N new connections per minute from each remote domain (the stream's from, else its to), in
    /// bursts of up to N. One more is refused (policy-violation), whatever --rate-exceeded says.
    #[arg(long, value_name = "N")]
    pub rate_connections: Option<u32>,

    /// At most N stanzas per second sent through xmpptap by each domain's servers and clients, in bursts of
    /// up to N. Beyond it, --rate-exceeded decides.
    #[arg(long, value_name = "N")]
    pub rate_stanzas: Option<u32>,

    /// At most BYTES bytes per second sent through xmpptap by each domain's servers and clients, in bursts of
    /// up to BYTES. Beyond it, --rate-exceeded decides.
    #[arg(long, value_name = "BYTES")]
    pub rate_bytes: Option<u64>,

    /// What happens when a domain goes over --rate-stanzas or --rate-bytes: delay (the default: hold its
    /// traffic back until it is under the rate again) or refuse (close its stream with a policy-violation
    /// stream error).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub rate_exceeded: Option<Exceeded>,
}

/// The `[policy]` table of the config file. Keys are the flag names with underscores, except `mode` for
/// `--policy`; unknown keys are rejected.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    /// `mode = "allowlist"`: as `--policy`.
    pub mode: Option<Mode>,
    /// `allow = ["a.example", "*.a.example"]`: as `--allow`.
    pub allow: Option<Vec<String>>,
    /// `block = ["spam.example"]`: as `--block`.
    pub block: Option<Vec<String>>,
    /// As `--rate-connections`.
    pub rate_connections: Option<u32>,
    /// As `--rate-stanzas`.
    pub rate_stanzas: Option<u32>,
    /// As `--rate-bytes`.
    pub rate_bytes: Option<u64>,
    /// `rate_exceeded = "refuse"`: as `--rate-exceeded`.
    pub rate_exceeded: Option<Exceeded>,
}

/// Validated policy settings: flags override the config file field by field, and a list given by flags
/// replaces the file's list.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PolicyConfig {
    /// Which domains may use xmpptap.
    pub mode: Mode,
    /// Patterns of the domains admitted under [`Mode::Allowlist`]; empty in other modes.
    pub allow: Vec<String>,
    /// Patterns of the domains refused under [`Mode::Blocklist`]; empty in other modes.
    pub block: Vec<String>,
    /// New connections per minute per remote domain; `None` for no limit.
    pub rate_connections: Option<u32>,
    /// Stanzas per second per sending domain; `None` for no limit.
    pub rate_stanzas: Option<u32>,
    /// Bytes per second per sending domain; `None` for no limit.
    pub rate_bytes: Option<u64>,
    /// What happens over the stanza or byte rate.
    pub rate_exceeded: Exceeded,
}

impl PolicyConfig {
    /// Merges the flags over the config file's `[policy]` table and validates the result. The error says which
    /// setting is wrong and what to do.
    pub fn merge(args: &PolicyArgs, file: Option<FilePolicy>) -> Result<Self, String> {
        let file = file.unwrap_or_default();
        let mode = args.policy.or(file.mode).unwrap_or_default();
        // --policy on the command line chose another mode than the file's: the file's lists belong to the
        // file's mode and are left out quietly.
        let mode_switched = args.policy.is_some_and(|flag| Some(flag) != file.mode);

        // A list given on the command line replaces the file's; remember where each came from.
        let (allow, allow_from_flag) = pick_list(&args.allow, file.allow);
        let (block, block_from_flag) = pick_list(&args.block, file.block);

        for (flag, patterns) in [("--allow", &allow), ("--block", &block)] {
            for pattern in patterns {
                check_pattern(flag, pattern)?;
            }
        }

        if mode == Mode::Allowlist && allow.is_empty() {
            return Err("--policy allowlist needs at least one --allow DOMAIN".into());
        }
        // A list the mode does not use is a mistake, not something to ignore.
        let unused =
            |list: &[String], from_flag: bool| !list.is_empty() && (from_flag || !mode_switched);
        if mode != Mode::Allowlist && unused(&allow, allow_from_flag) {
            return Err(unused_list("allow", mode, Mode::Allowlist));
        }
        if mode != Mode::Blocklist && unused(&block, block_from_flag) {
            return Err(unused_list("block", mode, Mode::Blocklist));
        }
        let (allow, block) = match mode {
            Mode::Open => (Vec::new(), Vec::new()),
            Mode::Allowlist => (allow, Vec::new()),
            Mode::Blocklist => (Vec::new(), block),
        };

        let rate_connections = args.rate_connections.or(file.rate_connections);
        let rate_stanzas = args.rate_stanzas.or(file.rate_stanzas);
        let rate_bytes = args.rate_bytes.or(file.rate_bytes);
        for (flag, rate) in [
            ("--rate-connections", rate_connections.map(u64::from)),
            ("--rate-stanzas", rate_stanzas.map(u64::from)),
            ("--rate-bytes", rate_bytes),
        ] {
            if rate == Some(0) {
                return Err(format!(
                    "{flag} must be at least 1 (leave it out for no limit)"
                ));
            }
        }

        Ok(PolicyConfig {
            mode,
            allow,
            block,
            rate_connections,
            rate_stanzas,
            rate_bytes,
            rate_exceeded: args
                .rate_exceeded
                .or(file.rate_exceeded)
                .unwrap_or_default(),
        })
    }

    /// Whether every domain is admitted with no rate: the proxy can skip all policy checks.
    pub fn is_open(&self) -> bool {
        self.mode == Mode::Open
            && self.rate_connections.is_none()
            && self.rate_stanzas.is_none()
            && self.rate_bytes.is_none()
    }
}

/// The flags' list if any was given, else the file's; and whether it came from the flags.
fn pick_list(flags: &[String], file: Option<Vec<String>>) -> (Vec<String>, bool) {
    if flags.is_empty() {
        (file.unwrap_or_default(), false)
    } else {
        (flags.to_vec(), true)
    }
}

/// The error for an --allow or --block list under a mode that does not use it.
fn unused_list(list: &str, mode: Mode, wants: Mode) -> String {
    let admitted = match mode {
        Mode::Open => "every domain is admitted",
        Mode::Allowlist => "only domains matching --allow are admitted",
        Mode::Blocklist => "every domain not matching --block is admitted",
    };
    format!(
        "--{list} is not used with --policy {mode} ({admitted}); use --policy {wants} \
         (mode = \"{wants}\" in [policy]) or remove the {list} list"
    )
}

/// Rejects a pattern that can never be meant as a domain.
fn check_pattern(flag: &str, pattern: &str) -> Result<(), String> {
    if normalize(pattern).is_empty() {
        return Err(format!("{flag}: empty domain pattern"));
    }
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{flag} {pattern:?}: a domain pattern cannot contain spaces or control characters"
        ));
    }
    if pattern.contains(['@', '/']) {
        return Err(format!(
            "{flag} {pattern:?}: give a domain (pattern), not a JID"
        ));
    }
    Ok(())
}

/// Why a domain was refused. `Display` is the text sent to the peer in `<policy-violation/>`'s `<text>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The domain matches no `--allow` pattern under [`Mode::Allowlist`].
    #[error("{domain} is not on xmpptap's allowlist (--policy allowlist)")]
    NotAllowed {
        /// The refused domain, lowercased.
        domain: String,
    },
    /// The domain matches a `--block` pattern under [`Mode::Blocklist`].
    #[error("{domain} is on xmpptap's blocklist (--policy blocklist)")]
    Blocked {
        /// The refused domain, lowercased.
        domain: String,
    },
    /// The domain opened more connections than `--rate-connections` allows.
    #[error("{domain} opened more than {per_minute} connections per minute through xmpptap (--rate-connections)")]
    ConnectionRate {
        /// The remote domain the connection counted against, lowercased.
        domain: String,
        /// The configured rate.
        per_minute: u32,
    },
    /// The domain sent more stanzas than `--rate-stanzas` allows.
    #[error(
        "{domain} sent more than {per_second} stanzas per second through xmpptap (--rate-stanzas)"
    )]
    StanzaRate {
        /// The sending domain, lowercased.
        domain: String,
        /// The configured rate.
        per_second: u32,
    },
    /// The domain sent more bytes than `--rate-bytes` allows.
    #[error(
        "{domain} sent more than {per_second} bytes per second through xmpptap (--rate-bytes)"
    )]
    ByteRate {
        /// The sending domain, lowercased.
        domain: String,
        /// The configured rate.
        per_second: u64,
    },
}

impl Refusal {
    /// A short fixed label for metrics: `not_allowed`, `blocked`, `connection_rate`, `stanza_rate` or
    /// `byte_rate`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAllowed { .. } => "not_allowed",
            Refusal::Blocked { .. } => "blocked",
            Refusal::ConnectionRate { .. } => "connection_rate",
            Refusal::StanzaRate { .. } => "stanza_rate",
            Refusal::ByteRate { .. } => "byte_rate",
        }
    }

    /// The refused domain, lowercased.
    pub fn domain(&self) -> &str {
        match self {
            Refusal::NotAllowed { domain }
            | Refusal::Blocked { domain }
            | Refusal::ConnectionRate { domain, .. }
            | Refusal::StanzaRate { domain, .. }
            | Refusal::ByteRate { domain, .. } => domain,
        }
    }
}

/// Whether `text` matches the glob `pattern`: `*` matches any run of characters (none, and dots, included),
/// `?` exactly one character, anything else itself, ignoring case. One trailing dot on either is ignored, as
/// domains are compared.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = normalize(pattern).chars().collect();
    let text: Vec<char> = normalize(text).chars().collect();
    glob_match_chars(&pattern, &text)
}

/// Iterative glob matching over normalized characters. On a mismatch it backtracks only to the last `*`, giving
/// it one more character: at most pattern × text steps, never recursion.
fn glob_match_chars(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and where in the text that `*`'s run ends.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                p += 1;
                star = Some((p, t));
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((resume, end)) => {
                    p = resume;
                    t = end + 1;
                    star = Some((resume, end + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The form domains and patterns are compared in: lowercase, without one trailing dot.
fn normalize(domain: &str) -> String {
    domain.strip_suffix('.').unwrap_or(domain).to_lowercase()
}

/// A compiled pattern: normalized characters.
type Pattern = Vec<char>;

/// One rate as a token bucket's shape, in exact integer units: one token is `period_ns` units, so refilling
/// adds `per_period` units per nanosecond and no rounding ever creeps in.
#[derive(Clone, Copy, Debug)]
struct Rate {
    /// Tokens per period, and the burst (the bucket holds one period's worth).
    per_period: u64,
    /// The period in nanoseconds: a second or a minute.
    period_ns: i128,
}

impl Rate {
    fn per_second(n: u64) -> Self {
        Rate {
            per_period: n,
            period_ns: 1_000_000_000,
        }
    }

    fn per_minute(n: u64) -> Self {
        Rate {
            per_period: n,
            period_ns: 60_000_000_000,
        }
    }

    /// A full bucket, in units.
    fn capacity(self) -> i128 {
        self.units(self.per_period)
    }

    /// `tokens` tokens in units. At most 2^64 × 6·10^10, far inside an i128.
    fn units(self, tokens: u64) -> i128 {
        i128::from(tokens) * self.period_ns
    }

    /// What drips in over `elapsed`, in units (saturating: only absurd spans reach the bound).
    fn refill_over(self, elapsed: Duration) -> i128 {
        let nanos = i128::try_from(elapsed.as_nanos()).unwrap_or(i128::MAX);
        nanos.saturating_mul(i128::from(self.per_period))
    }
}

/// The three rates, each `None` when not limited.
#[derive(Clone, Copy, Debug, Default)]
struct Rates {
    connections: Option<Rate>,
    stanzas: Option<Rate>,
    bytes: Option<Rate>,
}

/// Units left in one bucket (negative: debt) as of `updated`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    units: i128,
    updated: Instant,
}

impl Bucket {
    fn full(rate: Option<Rate>, now: Instant) -> Self {
        Bucket {
            units: rate.map_or(0, Rate::capacity),
            updated: now,
        }
    }

    /// The units at `now`, without changing anything. A `now` earlier than the last update (callers take
    /// their instants before the lock) adds nothing.
    fn units_at(&self, rate: Rate, now: Instant) -> i128 {
        let dripped = rate.refill_over(now.saturating_duration_since(self.updated));
        self.units.saturating_add(dripped).min(rate.capacity())
    }

    /// Adds what has dripped in since the last update, up to the capacity.
    fn refill(&mut self, rate: Rate, now: Instant) {
        self.units = self.units_at(rate, now);
        self.updated = self.updated.max(now);
    }

    /// Whether the bucket would be full at `now`, and so no different from a fresh one.
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        self.units_at(rate, now) >= rate.capacity()
    }

    /// Whether `tokens` may be taken without going over the rate, after a refill. A batch bigger than the
    /// whole bucket may be taken when the bucket is full, or it could never pass.
    fn has_room(&self, rate: Rate, tokens: u64) -> bool {
        self.units >= rate.units(tokens).min(rate.capacity())
    }

    /// Takes `tokens`, possibly into debt, after a refill; returns how long until the debt is repaid (rounded
    /// up, so that after waiting it the bucket is out of debt).
    fn take(&mut self, rate: Rate, tokens: u64) -> Option<Duration> {
        self.units = self.units.saturating_sub(rate.units(tokens));
        if self.units >= 0 {
            return None;
        }
        // per_period is at least 1: merge rejects zero rates, and no bucket exists for an absent one.
        let per_ns = i128::from(rate.per_period.max(1));
        let wait_ns = (-self.units + per_ns - 1) / per_ns;
        // A debt beyond u64 nanoseconds (584 years) waits "forever" rather than wrapping.
        Some(u64::try_from(wait_ns).map_or(Duration::MAX, Duration::from_nanos))
    }
}

/// One domain's rate state.
#[derive(Clone, Copy, Debug)]
struct Buckets {
    connections: Bucket,
    stanzas: Bucket,
    bytes: Bucket,
    /// The last time any of them was used, to forget the least recently seen domains first.
    last_seen: Instant,
}

impl Buckets {
    fn full(rates: &Rates, now: Instant) -> Self {
        Buckets {
            connections: Bucket::full(rates.connections, now),
            stanzas: Bucket::full(rates.stanzas, now),
            bytes: Bucket::full(rates.bytes, now),
            last_seen: now,
        }
    }

    /// Whether every limited bucket has refilled, so forgetting the domain loses nothing.
    fn is_idle(&self, rates: &Rates, now: Instant) -> bool {
        [
            (&self.connections, rates.connections),
            (&self.stanzas, rates.stanzas),
            (&self.bytes, rates.bytes),
        ]
        .into_iter()
        .all(|(bucket, rate)| rate.is_none_or(|rate| bucket.is_full(rate, now)))
    }
}

/// The policy with its shared rate state: one per process, shared by all sessions as `Arc<Policy>`.
pub struct Policy {
    config: PolicyConfig,
    allow: Vec<Pattern>,
    block: Vec<Pattern>,
    rates: Rates,
    max_domains: usize,
    /// Rate state per normalized domain, at most `max_domains` entries.
    domains: Mutex<HashMap<String, Buckets>>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("config", &self.config)
            .field("tracked_domains", &self.tracked_domains())
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// A policy with no rate state yet, tracking at most [`MAX_DOMAINS`] domains.
    pub fn new(config: PolicyConfig) -> Self {
        Self::with_max_domains(config, MAX_DOMAINS)
    }

    fn with_max_domains(config: PolicyConfig, max_domains: usize) -> Self {
        let compile = |patterns: &[String]| -> Vec<Pattern> {
            patterns
                .iter()
                .map(|p| normalize(p).chars().collect())
                .collect()
        };
        let rates = Rates {
            connections: config.rate_connections.map(|n| Rate::per_minute(n.into())),
            stanzas: config.rate_stanzas.map(|n| Rate::per_second(n.into())),
            bytes: config.rate_bytes.map(Rate::per_second),
        };
        Policy {
            allow: compile(&config.allow),
            block: compile(&config.block),
            config,
            rates,
            max_domains: max_domains.max(1),
            domains: Mutex::new(HashMap::new()),
        }
    }

    /// The settings this policy was built from.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// How many domains have rate state right now (at most [`MAX_DOMAINS`]).
    pub fn tracked_domains(&self) -> usize {
        self.domains
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// A new connection whose stream header names these domains (`from` may be `None`, as for C2S). Domains,
    /// not JIDs. Every domain given must pass the allow/block check; then the connection counts against the
    /// rate of the remote domain, `from` if present, else `to`. A connection over its rate is refused whatever
    /// [`Exceeded`] says. `now` is the caller's clock.
    pub fn admit(&self, from: Option<&str>, to: &str, now: Instant) -> Result<(), Refusal> {
        for domain in from.into_iter().chain([to]) {
            self.check_domain(domain)?;
        }
        let Some(rate) = self.rates.connections else {
            return Ok(());
        };
        let remote = normalize(from.unwrap_or(to));
        self.with_buckets(&remote, now, |buckets| {
            let bucket = &mut buckets.connections;
            bucket.refill(rate, now);
            if bucket.has_room(rate, 1) {
                bucket.take(rate, 1);
                Ok(())
            } else {
                Err(Refusal::ConnectionRate {
                    domain: remote.clone(),
                    per_minute: self.config.rate_connections.unwrap_or_default(),
                })
            }
        })
    }

    /// A batch of `stanzas` stanzas and `bytes` bytes sent by `domain`, before it is forwarded.
    ///
    /// `Ok(None)`: go on. `Ok(Some(wait))`: over a rate with [`Exceeded::Delay`]; wait that long, until the
    /// buckets have room for the batch, then forward (the batch is already counted). `Err`: over a rate with
    /// [`Exceeded::Refuse`]; nothing was counted. Takes no lock when no stanza or byte rate is set.
    pub fn traffic(
        &self,
        domain: &str,
        stanzas: u32,
        bytes: u64,
        now: Instant,
    ) -> Result<Option<Duration>, Refusal> {
        let Rates {
            stanzas: stanza_rate,
            bytes: byte_rate,
            ..
        } = self.rates;
        // Each limited resource the batch uses, with what it uses of it.
        let stanza_use = stanza_rate
            .filter(|_| stanzas > 0)
            .map(|rate| (rate, u64::from(stanzas)));
        let byte_use = byte_rate.filter(|_| bytes > 0).map(|rate| (rate, bytes));
        if stanza_use.is_none() && byte_use.is_none() {
            return Ok(None);
        }
        let domain = normalize(domain);
        self.with_buckets(&domain, now, |buckets| {
            if let Some((rate, _)) = stanza_use {
                buckets.stanzas.refill(rate, now);
            }
            if let Some((rate, _)) = byte_use {
                buckets.bytes.refill(rate, now);
            }
            let refuse = self.config.rate_exceeded == Exceeded::Refuse;
            if refuse {
                // Check both before taking from either, so a refusal takes nothing.
                if let Some((rate, amount)) = stanza_use {
                    if !buckets.stanzas.has_room(rate, amount) {
                        return Err(Refusal::StanzaRate {
                            domain: domain.clone(),
                            per_second: self.config.rate_stanzas.unwrap_or_default(),
                        });
                    }
                }
                if let Some((rate, amount)) = byte_use {
                    if !buckets.bytes.has_room(rate, amount) {
                        return Err(Refusal::ByteRate {
                            domain: domain.clone(),
                            per_second: self.config.rate_bytes.unwrap_or_default(),
                        });
                    }
                }
            }
            let stanza_wait =
                stanza_use.and_then(|(rate, amount)| buckets.stanzas.take(rate, amount));
            let byte_wait = byte_use.and_then(|(rate, amount)| buckets.bytes.take(rate, amount));
            if refuse {
                // There was room; an oversize batch may leave debt behind, which refuses what follows until
                // repaid, but this batch goes on at once.
                Ok(None)
            } else {
                // The longer of the two debts.
                Ok(stanza_wait.max(byte_wait))
            }
        })
    }

    /// Refuses `domain` if the mode and lists say so.
    fn check_domain(&self, domain: &str) -> Result<(), Refusal> {
        let matches = |patterns: &[Pattern], text: &[char]| {
            patterns
                .iter()
                .any(|pattern| glob_match_chars(pattern, text))
        };
        match self.config.mode {
            Mode::Open => Ok(()),
            Mode::Allowlist => {
                let domain = normalize(domain);
                let text: Vec<char> = domain.chars().collect();
                if matches(&self.allow, &text) {
                    Ok(())
                } else {
                    Err(Refusal::NotAllowed { domain })
                }
            }
            Mode::Blocklist => {
                let domain = normalize(domain);
                let text: Vec<char> = domain.chars().collect();
                if matches(&self.block, &text) {
                    Err(Refusal::Blocked { domain })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Runs `f` on `domain`'s buckets (created full if new, making room first), under the lock.
    fn with_buckets<T>(&self, domain: &str, now: Instant, f: impl FnOnce(&mut Buckets) -> T) -> T {
        let mut domains = self.domains.lock().unwrap_or_else(PoisonError::into_inner);
        if !domains.contains_key(domain) {
            self.make_room(&mut domains, now);
        }
        let buckets = domains
            .entry(domain.to_owned())
            .or_insert_with(|| Buckets::full(&self.rates, now));
        buckets.last_seen = buckets.last_seen.max(now);
        f(buckets)
    }

    /// Makes room when the map is full: forgets the idle domains, then, if that freed less than a tenth of the
    /// capacity, the least recently seen domains down to nine tenths. Each sweep is O(n) and leaves a tenth
    /// free, so sweeps come at most once per tenth of the capacity of new domains.
    fn make_room(&self, domains: &mut HashMap<String, Buckets>, now: Instant) {
        if domains.len() < self.max_domains {
            return;
        }
        domains.retain(|_, buckets| !buckets.is_idle(&self.rates, now));
        let keep = self.max_domains - (self.max_domains / 10).max(1);
        let Some(evict) = domains.len().checked_sub(keep).filter(|&n| n > 0) else {
            return;
        };
        let mut by_age: Vec<(Instant, &String)> = domains
            .iter()
            .map(|(domain, buckets)| (buckets.last_seen, domain))
            .collect();
        by_age.select_nth_unstable_by_key(evict - 1, |&(seen, _)| seen);
        let victims: Vec<String> = by_age[..evict]
            .iter()
            .map(|&(_, domain)| domain.clone())
            .collect();
        for domain in victims {
            domains.remove(&domain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The flags as the proxy flattens them.
    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    fn flags(args: &[&str]) -> PolicyArgs {
        let argv = std::iter::once("xmpptap").chain(args.iter().copied());
        match Flags::try_parse_from(argv) {
            Ok(flags) => flags.policy,
            Err(err) => panic!("{args:?}: {err}"),
        }
    }

    fn file(toml_text: &str) -> FilePolicy {
        match toml::from_str(toml_text) {
            Ok(file) => file,
            Err(err) => panic!("{toml_text}: {err}"),
        }
    }

    fn merge(args: &[&str], file_text: Option<&str>) -> Result<PolicyConfig, String> {
        PolicyConfig::merge(&flags(args), file_text.map(file))
    }

    fn config(args: &[&str]) -> PolicyConfig {
        match merge(args, None) {
            Ok(config) => config,
            Err(err) => panic!("{args:?}: {err}"),
        }
    }

    fn policy(args: &[&str]) -> Policy {
        Policy::new(config(args))
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// Over the rate with Delay: wait exactly `millis`.
    fn wait(millis: u64) -> Result<Option<Duration>, Refusal> {
        Ok(Some(ms(millis)))
    }

    #[test]
    fn glob_matching() {
        let cases = [
            ("example.org", "example.org", true),
            ("example.org", "EXAMPLE.Org", true),
            ("Example.ORG", "example.org", true),
            ("example.org", "example.org.", true),
            ("example.org", "example.net", false),
            ("example.org", "a.example.org", false),
            ("*.example.org", "a.example.org", true),
            ("*.example.org", "a.b.example.org", true),
            ("*.example.org", "example.org", false),
            ("*.example.org", "badexample.org", false),
            ("*example.org", "badexample.org", true),
            ("*", "anything.at.all", true),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("?.example", "a.example", true),
            ("?.example", "ab.example", false),
            ("?.example", ".example", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            ("xmpp.*", "xmpp.example.net", true),
            ("ÉCOLE.example", "école.example", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob_match(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn glob_matching_is_not_exponential() {
        let text = "a".repeat(2000);
        let pattern = format!("{}b", "*a".repeat(200));
        assert!(!glob_match(&pattern, &text));
    }

    #[test]
    fn modes_admit_and_refuse() {
        let now = Instant::now();
        let open = policy(&[]);
        let allow = policy(&[
            "--policy",
            "allowlist",
            "--allow",
            "a.example",
            "--allow",
            "*.B.example",
        ]);
        let block = policy(&["--policy", "blocklist", "--block", "*.spam.example"]);
        let not_allowed = |domain: &str| {
            Err(Refusal::NotAllowed {
                domain: domain.into(),
            })
        };
        let blocked = |domain: &str| {
            Err(Refusal::Blocked {
                domain: domain.into(),
            })
        };
        type Case<'a> = (&'a Policy, Option<&'a str>, &'a str, Result<(), Refusal>);
        let cases: [Case; 12] = [
            (&open, Some("anything.example"), "a.example", Ok(())),
            (&open, None, "a.example", Ok(())),
            (&allow, Some("x.b.example"), "a.example", Ok(())),
            (&allow, Some("A.Example"), "X.B.EXAMPLE", Ok(())),
            (&allow, None, "a.example", Ok(())),
            (
                &allow,
                Some("b.example"),
                "a.example",
                not_allowed("b.example"),
            ),
            (
                &allow,
                Some("a.example"),
                "c.example",
                not_allowed("c.example"),
            ),
            (
                &allow,
                Some("C.example."),
                "a.example",
                not_allowed("c.example"),
            ),
            (&block, Some("a.example"), "b.example", Ok(())),
            (&block, Some("spam.example"), "b.example", Ok(())),
            (
                &block,
                Some("x.SPAM.example"),
                "b.example",
                blocked("x.spam.example"),
            ),
            (
                &block,
                Some("a.example"),
                "y.spam.example",
                blocked("y.spam.example"),
            ),
        ];
        for (policy, from, to, want) in cases {
            assert_eq!(
                policy.admit(from, to, now),
                want,
                "{:?} from {from:?} to {to:?}",
                policy.config().mode
            );
        }
    }

    #[test]
    fn refusal_text_reason_and_domain() {
        let cases = [
            (
                Refusal::NotAllowed {
                    domain: "b.example".into(),
                },
                "b.example is not on xmpptap's allowlist (--policy allowlist)",
                "not_allowed",
            ),
            (
                Refusal::Blocked {
                    domain: "b.example".into(),
                },
                "b.example is on xmpptap's blocklist (--policy blocklist)",
                "blocked",
            ),
            (
                Refusal::ConnectionRate {
                    domain: "b.example".into(),
                    per_minute: 5,
                },
                "b.example opened more than 5 connections per minute through xmpptap (--rate-connections)",
                "connection_rate",
            ),
            (
                Refusal::StanzaRate {
                    domain: "b.example".into(),
                    per_second: 10,
                },
                "b.example sent more than 10 stanzas per second through xmpptap (--rate-stanzas)",
                "stanza_rate",
            ),
            (
                Refusal::ByteRate {
                    domain: "b.example".into(),
                    per_second: 1000,
                },
                "b.example sent more than 1000 bytes per second through xmpptap (--rate-bytes)",
                "byte_rate",
            ),
        ];
        for (refusal, text, reason) in cases {
            assert_eq!(refusal.to_string(), text);
            assert_eq!(refusal.reason(), reason);
            assert_eq!(refusal.domain(), "b.example");
        }
    }

    #[test]
    fn merge_flags_over_file() {
        let file_text = r#"
            mode = "blocklist"
            block = ["file.example"]
            rate_connections = 10
            rate_stanzas = 20
            rate_bytes = 3000
            rate_exceeded = "refuse"
        "#;

        let from_file = merge(&[], Some(file_text));
        assert_eq!(
            from_file,
            Ok(PolicyConfig {
                mode: Mode::Blocklist,
                allow: vec![],
                block: vec!["file.example".into()],
                rate_connections: Some(10),
                rate_stanzas: Some(20),
                rate_bytes: Some(3000),
                rate_exceeded: Exceeded::Refuse,
            })
        );

        let overridden = merge(
            &[
                "--block",
                "flag.example",
                "--block",
                "*.flag.example",
                "--rate-stanzas",
                "5",
                "--rate-exceeded",
                "delay",
            ],
            Some(file_text),
        );
        assert_eq!(
            overridden,
            Ok(PolicyConfig {
                mode: Mode::Blocklist,
                allow: vec![],
                block: vec!["flag.example".into(), "*.flag.example".into()],
                rate_connections: Some(10),
                rate_stanzas: Some(5),
                rate_bytes: Some(3000),
                rate_exceeded: Exceeded::Delay,
            })
        );

        // --policy on the command line switches away from the file's mode; the file's block list goes with it.
        let switched = merge(
            &["--policy", "allowlist", "--allow", "a.example"],
            Some(file_text),
        );
        assert_eq!(
            switched.map(|c| (c.mode, c.allow, c.block)),
            Ok((Mode::Allowlist, vec!["a.example".to_owned()], vec![]))
        );

        assert_eq!(merge(&[], None), Ok(PolicyConfig::default()));
        assert_eq!(merge(&[], Some("")), Ok(PolicyConfig::default()));
    }

    #[test]
    fn file_rejects_unknown_keys() {
        assert!(toml::from_str::<FilePolicy>("policy = \"open\"").is_err());
        assert!(toml::from_str::<FilePolicy>("mode = \"closed\"").is_err());
    }

    #[test]
    fn merge_errors() {
        let cases: [(&[&str], Option<&str>, &str); 14] = [
            (
                &["--policy", "allowlist"],
                None,
                "--policy allowlist needs at least one --allow DOMAIN",
            ),
            (
                &[],
                Some("mode = \"allowlist\"\nallow = []"),
                "--policy allowlist needs at least one --allow DOMAIN",
            ),
            (
                &["--rate-connections", "0"],
                None,
                "--rate-connections must be at least 1 (leave it out for no limit)",
            ),
            (
                &["--rate-stanzas", "0"],
                None,
                "--rate-stanzas must be at least 1 (leave it out for no limit)",
            ),
            (
                &[],
                Some("rate_bytes = 0"),
                "--rate-bytes must be at least 1 (leave it out for no limit)",
            ),
            (
                &["--policy", "allowlist", "--allow", ""],
                None,
                "--allow: empty domain pattern",
            ),
            (
                &["--policy", "blocklist", "--block", "a example"],
                None,
                "--block \"a example\": a domain pattern cannot contain spaces or control characters",
            ),
            (
                &["--policy", "blocklist", "--block", "user@a.example"],
                None,
                "--block \"user@a.example\": give a domain (pattern), not a JID",
            ),
            (
                &["--policy", "allowlist", "--allow", "a.example", "--block", "b.example"],
                None,
                "--block is not used with --policy allowlist (only domains matching --allow are admitted); \
                 use --policy blocklist (mode = \"blocklist\" in [policy]) or remove the block list",
            ),
            (
                &[],
                Some("mode = \"allowlist\"\nallow = [\"a.example\"]\nblock = [\"b.example\"]"),
                "--block is not used with --policy allowlist (only domains matching --allow are admitted); \
                 use --policy blocklist (mode = \"blocklist\" in [policy]) or remove the block list",
            ),
            (
                &["--policy", "blocklist", "--allow", "a.example"],
                None,
                "--allow is not used with --policy blocklist (every domain not matching --block is \
                 admitted); use --policy allowlist (mode = \"allowlist\" in [policy]) or remove the allow list",
            ),
            (
                // The file is inconsistent in itself; repeating its mode on the command line changes nothing.
                &["--policy", "allowlist"],
                Some("mode = \"allowlist\"\nallow = [\"a.example\"]\nblock = [\"b.example\"]"),
                "--block is not used with --policy allowlist (only domains matching --allow are admitted); \
                 use --policy blocklist (mode = \"blocklist\" in [policy]) or remove the block list",
            ),
            (
                &[],
                Some("allow = [\"a.example\"]"),
                "--allow is not used with --policy open (every domain is admitted); use --policy allowlist \
                 (mode = \"allowlist\" in [policy]) or remove the allow list",
            ),
            (
                &["--block", "b.example"],
                None,
                "--block is not used with --policy open (every domain is admitted); use --policy blocklist \
                 (mode = \"blocklist\" in [policy]) or remove the block list",
            ),
        ];
        for (args, file_text, want) in cases {
            assert_eq!(
                merge(args, file_text),
                Err(want.to_owned()),
                "{args:?} {file_text:?}"
            );
        }
    }

    #[test]
    fn is_open() {
        let cases: [(&[&str], bool); 6] = [
            (&[], true),
            (&["--policy", "open", "--rate-exceeded", "refuse"], true),
            (&["--policy", "blocklist", "--block", "b.example"], false),
            (&["--rate-connections", "1"], false),
            (&["--rate-stanzas", "1"], false),
            (&["--rate-bytes", "1"], false),
        ];
        for (args, want) in cases {
            assert_eq!(config(args).is_open(), want, "{args:?}");
        }
    }

    #[test]
    fn connection_rate() {
        let policy = policy(&["--rate-connections", "3"]);
        let start = Instant::now();
        let refused = Err(Refusal::ConnectionRate {
            domain: "a.example".into(),
            per_minute: 3,
        });
        for _ in 0..3 {
            assert_eq!(policy.admit(Some("a.example"), "b.example", start), Ok(()));
        }
        assert_eq!(policy.admit(Some("A.example"), "b.example", start), refused);
        // The rate counts against `from`: b.example as `to` has its own budget, as has another domain.
        assert_eq!(policy.admit(None, "a.example", start), refused);
        assert_eq!(policy.admit(Some("c.example"), "a.example", start), Ok(()));
        // One connection drips back every 20 s; a refused one took nothing.
        assert_eq!(
            policy.admit(Some("a.example"), "b.example", start + ms(19900)),
            refused
        );
        assert_eq!(
            policy.admit(Some("a.example"), "b.example", start + ms(20000)),
            Ok(())
        );
        assert_eq!(
            policy.admit(Some("a.example"), "b.example", start + ms(20000)),
            refused
        );
        // After a full minute the whole burst is back, and no more.
        let later = start + ms(120000);
        for _ in 0..3 {
            assert_eq!(policy.admit(Some("a.example"), "b.example", later), Ok(()));
        }
        assert_eq!(policy.admit(Some("a.example"), "b.example", later), refused);
    }

    #[test]
    fn connection_rate_after_allow_check() {
        let policy = policy(&[
            "--policy",
            "blocklist",
            "--block",
            "x.example",
            "--rate-connections",
            "1",
        ]);
        let now = Instant::now();
        assert!(matches!(
            policy.admit(Some("x.example"), "b.example", now),
            Err(Refusal::Blocked { .. })
        ));
        assert_eq!(policy.tracked_domains(), 0);
        assert_eq!(policy.admit(None, "b.example", now), Ok(()));
        assert!(matches!(
            policy.admit(None, "b.example", now),
            Err(Refusal::ConnectionRate { .. })
        ));
    }

    #[test]
    fn stanza_rate_delay_gives_growing_waits() {
        let policy = policy(&["--rate-stanzas", "10"]);
        let start = Instant::now();
        // The burst of 10 passes at once.
        for _ in 0..10 {
            assert_eq!(policy.traffic("a.example", 1, 0, start), Ok(None));
        }
        // Then each stanza waits 0.1 s longer than the one before.
        for n in 1..=5 {
            assert_eq!(policy.traffic("a.example", 1, 0, start), wait(100 * n));
        }
        // Other domains have their own buckets.
        assert_eq!(policy.traffic("b.example", 10, 0, start), Ok(None));
        // Debt is repaid over time: after 0.5 s the bucket is empty, not negative.
        assert_eq!(
            policy.traffic("a.example", 1, 0, start + ms(500)),
            wait(100)
        );
        // After a long pause, a full burst again.
        assert_eq!(
            policy.traffic("a.example", 10, 0, start + ms(10000)),
            Ok(None)
        );
    }

    #[test]
    fn stanza_rate_refuse_takes_nothing() {
        let policy = policy(&["--rate-stanzas", "10", "--rate-exceeded", "refuse"]);
        let start = Instant::now();
        let refused = Err(Refusal::StanzaRate {
            domain: "a.example".into(),
            per_second: 10,
        });
        assert_eq!(policy.traffic("a.example", 8, 0, start), Ok(None));
        assert_eq!(policy.traffic("a.example", 3, 0, start), refused);
        // The refused 3 took nothing: 2 are still there.
        assert_eq!(policy.traffic("a.example", 2, 0, start), Ok(None));
        assert_eq!(policy.traffic("a.example", 1, 0, start), refused);
        assert_eq!(policy.traffic("a.example", 1, 0, start + ms(100)), Ok(None));
    }

    #[test]
    fn byte_rate() {
        let delay = policy(&["--rate-bytes", "1000"]);
        let start = Instant::now();
        assert_eq!(delay.traffic("a.example", 1, 600, start), Ok(None));
        assert_eq!(delay.traffic("a.example", 1, 600, start), wait(200));
        assert_eq!(delay.traffic("a.example", 1, 500, start), wait(700));
        // Stanzas are not limited here: a batch with no bytes passes.
        assert_eq!(delay.traffic("a.example", 50, 0, start), Ok(None));

        let refuse = policy(&["--rate-bytes", "1000", "--rate-exceeded", "refuse"]);
        assert_eq!(refuse.traffic("a.example", 1, 600, start), Ok(None));
        assert_eq!(
            refuse.traffic("a.example", 1, 600, start),
            Err(Refusal::ByteRate {
                domain: "a.example".into(),
                per_second: 1000,
            })
        );
        assert_eq!(
            refuse.traffic("a.example", 1, 600, start + ms(200)),
            Ok(None)
        );
    }

    #[test]
    fn stanza_and_byte_rates_together() {
        let delay = policy(&["--rate-stanzas", "10", "--rate-bytes", "1000"]);
        let start = Instant::now();
        // The longer of the two waits: bytes 1.0 s in debt, stanzas 0.
        assert_eq!(delay.traffic("a.example", 10, 2000, start), wait(1000));
        // Stanzas now 0.5 s in debt, bytes 1.0 + 0.1.
        assert_eq!(delay.traffic("a.example", 5, 100, start), wait(1100));

        let refuse = policy(&[
            "--rate-stanzas",
            "10",
            "--rate-bytes",
            "1000",
            "--rate-exceeded",
            "refuse",
        ]);
        assert_eq!(refuse.traffic("a.example", 1, 900, start), Ok(None));
        // Refused for bytes: the stanza bucket must not have been charged either.
        assert!(matches!(
            refuse.traffic("a.example", 9, 200, start),
            Err(Refusal::ByteRate { .. })
        ));
        assert_eq!(refuse.traffic("a.example", 9, 100, start), Ok(None));
    }

    #[test]
    fn batch_bigger_than_the_bucket_passes_eventually() {
        let start = Instant::now();
        let delay = policy(&["--rate-bytes", "1000"]);
        // 5000 bytes at 1000/s: 4 s of debt after the full bucket.
        assert_eq!(delay.traffic("a.example", 1, 5000, start), wait(4000));
        assert_eq!(delay.traffic("a.example", 1, 0, start + ms(4000)), Ok(None));
        assert_eq!(
            delay.traffic("a.example", 1, 1000, start + ms(5000)),
            Ok(None)
        );

        let refuse = policy(&["--rate-bytes", "1000", "--rate-exceeded", "refuse"]);
        // Only when the bucket is full, then it is in debt until repaid.
        assert_eq!(refuse.traffic("a.example", 1, 1, start), Ok(None));
        assert!(refuse.traffic("a.example", 1, 5000, start).is_err());
        assert_eq!(
            refuse.traffic("a.example", 1, 5000, start + ms(1000)),
            Ok(None)
        );
        assert!(refuse.traffic("a.example", 1, 1, start + ms(5000)).is_err());
        assert_eq!(
            refuse.traffic("a.example", 1, 1, start + ms(5001)),
            Ok(None)
        );
    }

    #[test]
    fn traffic_without_rates_is_free() {
        let policy = policy(&["--rate-connections", "1"]);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(policy.traffic("a.example", 1000, 1 << 40, now), Ok(None));
        }
        assert_eq!(policy.tracked_domains(), 0);
    }

    #[test]
    fn domains_are_bounded() {
        let policy = Policy::with_max_domains(config(&["--rate-stanzas", "1"]), 100);
        let start = Instant::now();
        for n in 0..100 {
            assert_eq!(
                policy.traffic(&format!("d{n}.example"), 1, 0, start),
                Ok(None)
            );
        }
        assert_eq!(policy.tracked_domains(), 100);

        // Every bucket has refilled by now: all are forgotten to make room.
        let later = start + ms(1000);
        assert_eq!(policy.traffic("new.example", 1, 0, later), Ok(None));
        assert_eq!(policy.tracked_domains(), 1);

        // All active (drained, same second): the least recently seen tenth goes.
        for n in 0..99 {
            let seen = later + Duration::from_millis(n);
            assert_eq!(
                policy.traffic(&format!("e{n}.example"), 1, 0, seen),
                Ok(None)
            );
        }
        assert_eq!(policy.tracked_domains(), 100);
        let seen = later + Duration::from_millis(100);
        assert_eq!(policy.traffic("last.example", 1, 0, seen), Ok(None));
        assert_eq!(policy.tracked_domains(), 91);
        // The oldest were forgotten (new.example first) and got a fresh bucket; the newest kept their debt.
        assert_eq!(policy.traffic("new.example", 1, 0, seen), Ok(None));
        assert_eq!(policy.traffic("e98.example", 1, 0, seen), wait(998));
    }

    #[test]
    fn eviction_frees_a_tenth_even_when_few_are_idle() {
        let policy = Policy::with_max_domains(config(&["--rate-stanzas", "2"]), 100);
        let start = Instant::now();
        // 5 domains use half their bucket early (refilled after 1 s), 95 drain it later.
        for n in 0..5 {
            assert_eq!(
                policy.traffic(&format!("idle{n}.example"), 1, 0, start),
                Ok(None)
            );
        }
        for n in 0..95 {
            let seen = start + ms(1000 + n);
            assert_eq!(
                policy.traffic(&format!("busy{n}.example"), 2, 0, seen),
                Ok(None)
            );
        }
        let now = start + ms(1100);
        assert_eq!(policy.traffic("new.example", 1, 0, now), Ok(None));
        // The 5 idle ones, then the 5 least recently seen busy ones: 90 left, plus the new one.
        assert_eq!(policy.tracked_domains(), 91);
        // busy0..busy4 start afresh with a full bucket of 2; busy5 kept its drained one, 0.19 refilled in
        // 95 ms, so one more stanza waits for the other 0.81.
        assert_eq!(policy.traffic("busy4.example", 2, 0, now), Ok(None));
        assert_eq!(policy.traffic("busy5.example", 1, 0, now), wait(405));
    }

    #[test]
    fn flags_parse_and_reject_bad_values() {
        let args = flags(&[
            "--policy",
            "allowlist",
            "--allow",
            "a.example",
            "--allow",
            "*.a.example",
            "--rate-connections",
            "30",
            "--rate-stanzas",
            "50",
            "--rate-bytes",
            "100000",
            "--rate-exceeded",
            "refuse",
        ]);
        assert_eq!(args.policy, Some(Mode::Allowlist));
        assert_eq!(args.allow, ["a.example", "*.a.example"]);
        assert_eq!(args.rate_bytes, Some(100_000));
        assert_eq!(args.rate_exceeded, Some(Exceeded::Refuse));
        for bad in [
            &["--policy", "closed"][..],
            &["--rate-stanzas", "-1"],
            &["--rate-exceeded", "drop"],
        ] {
            let argv = std::iter::once("xmpptap").chain(bad.iter().copied());
            assert!(Flags::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
