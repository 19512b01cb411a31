//! The rules as written: the serde types of a rule file, read from and printed back to TOML.
//!
//! These types hold text as the operator wrote it (globs, regexes, XML snippets); nothing here is compiled or
//! checked beyond what serde checks. [`super::RuleSet`] validates and compiles them. Every table denies unknown
//! fields, so a misspelt key is an error rather than a rule that silently matches more than meant.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ListenerKind;
use crate::side::Direction;

/// A rule file: `[[rule]]` tables, in the order they are tried.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// The rules, in file order.
    #[serde(rename = "rule", default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// One rule: when an element matches, what to do with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A name unique within the rule set; events and the control API refer to the rule by it.
    pub name: String,
    /// The conditions, all of which must hold. Empty matches every element.
    #[serde(rename = "match", default, skip_serializing_if = "Match::is_empty")]
    pub matches: Match,
    /// What to do with a matching element.
    pub action: Action,
}

/// The conditions of a rule (`[rule.match]`). Every field is optional; all those given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The kind of listener the connection came in on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<Listener>,
    /// The direction the element travels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Dir>,
    /// Glob on the initiating domain (`from` of the initiator's stream header). C2S streams have none, which
    /// only `*` matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    /// Glob on the receiving domain (`to` of the initiator's stream header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver: Option<String>,
    /// Local name of the element, e.g. `message`, or `result` for `<db:result>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element: Option<String>,
    /// Resolved namespace of the element, e.g. `jabber:server:dialback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns: Option<String>,
    /// The `type` attribute, compared exactly.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Attributes of the start tag, by name as written (`from`, `xml:lang`): each must exist and match its
    /// glob.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// A direct child element: a local name (`ping`) or `{namespace}local` (`{urn:xmpp:ping}ping`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
    /// A regex searched in the element's text content (all descendant text, entities decoded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Let this many matching elements pass before the rule acts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_stanzas: Option<u64>,
    /// Then act on the first match and every `every`th after it (1, the default, acts on every match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// Then act with this probability, in `0.0..=1.0` (default 1.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
}

impl Match {
    /// Whether no condition is given, so that every element matches.
    pub fn is_empty(&self) -> bool {
        *self == Match::default()
    }
}

/// A listener kind as written in a rule: `s2s` or `c2s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listener {
    /// Server-to-server.
    S2s,
    /// Client-to-server.
    C2s,
}

impl Listener {
    /// The listener kind this names.
    pub fn kind(self) -> ListenerKind {
        match self {
            Listener::S2s => ListenerKind::S2s,
            Listener::C2s => ListenerKind::C2s,
        }
    }

    /// Whether a connection from a listener of `kind` is meant.
    pub fn matches(&self, kind: ListenerKind) -> bool {
        self.kind() == kind
    }
}

/// A direction as written in a rule: `up` (initiator to receiver) or `down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// From the initiator toward the receiver.
    Up,
    /// From the receiver toward the initiator.
    Down,
}

impl Dir {
    /// The direction this names.
    pub fn direction(self) -> Direction {
        match self {
            Dir::Up => Direction::Up,
            Dir::Down => Direction::Down,
        }
    }

    /// Whether `direction` is meant.
    pub fn matches(&self, direction: Direction) -> bool {
        self.direction() == direction
    }
}

/// What a rule does to a matching element (`[rule.action]`, told apart by `kind`).
///
/// Elements xmpptap injects are not matched against rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Do not forward the element.
    #[serde(deserialize_with = "no_fields")]
    Drop,
    /// Forward the element after `ms` milliseconds, give or take up to `jitter_ms` (uniformly drawn). What
    /// follows it in the same direction waits behind it.
    Delay {
        /// The delay.
        ms: u64,
        /// The largest random deviation from `ms`.
        #[serde(default, skip_serializing_if = "is_zero")]
        jitter_ms: u64,
    },
    /// Forward the element changed as the spec says.
    Rewrite(RewriteSpec),
    /// Send an element of our own with the matched one.
    ///
    /// `{from}`, `{to}` and `{id}` in `xml` stand for those attributes of the matched element (escaped; empty
    /// when absent): S2S stanzas must be addressed, and the domains are the matched stanza's.
    Inject {
        /// One well-formed element.
        xml: String,
        /// Where it goes.
        #[serde(default, skip_serializing_if = "InjectAt::is_before")]
        at: InjectAt,
    },
    /// End the stream in this direction with a stream error, then close the connection.
    Close {
        /// The stream error condition (RFC 6120 4.9.3), e.g. `policy-violation`.
        #[serde(default = "undefined_condition")]
        condition: String,
        /// The error's human-readable text.
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// Forward nothing more in this direction, for `ms` milliseconds (then carry on) or, without `ms`, for as
    /// long as the connection lasts. The connection is kept open.
    Stall {
        /// How long; `None` for ever.
        #[serde(skip_serializing_if = "Option::is_none")]
        ms: Option<u64>,
    },
    /// Turn a dialback answer (`<db:result>` or `<db:verify>` with `type='valid'`) into `type='invalid'`.
    #[serde(deserialize_with = "no_fields")]
    DialbackInvalid,
    /// From this element on, limit this direction to `bytes_per_sec`.
    Throttle {
        /// The rate, more than zero.
        bytes_per_sec: u64,
    },
    /// From this element on, cut writes in this direction into chunks of `bytes`, `delay_ms` apart.
    Slice {
        /// The chunk size, more than zero.
        bytes: usize,
        /// The pause between chunks.
        #[serde(default, skip_serializing_if = "is_zero")]
        delay_ms: u64,
    },
    /// Close the connection once this many more bytes or stanzas have gone in this direction, whichever comes
    /// first (at least one is given).
    CutAfter {
        /// Bytes, counted from the start of the matched element.
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
        /// Stanzas, counted from the matched element.
        #[serde(skip_serializing_if = "Option::is_none")]
        stanzas: Option<u64>,
    },
    /// Reset both TCP connections (RST, not FIN).
    #[serde(deserialize_with = "no_fields")]
    Reset,
}

impl Action {
    /// The `kind` string, e.g. `drop`, `dialback_invalid`.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Delay { .. } => "delay",
            Action::Rewrite(_) => "rewrite",
            Action::Inject { .. } => "inject",
            Action::Close { .. } => "close",
            Action::Stall { .. } => "stall",
            Action::DialbackInvalid => "dialback_invalid",
            Action::Throttle { .. } => "throttle",
            Action::Slice { .. } => "slice",
            Action::CutAfter { .. } => "cut_after",
            Action::Reset => "reset",
        }
    }

    /// Whether carrying this action out changes how many stanzas a peer receives (drop, inject), which
    /// desynchronises XEP-0198 `h` counters: the relay refuses such rules on streams with stream management.
    pub fn changes_stanza_count(&self) -> bool {
        matches!(self, Action::Drop | Action::Inject { .. })
    }
}

/// Where an injected element goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectAt {
    /// Just before the matched element, in its direction.
    #[default]
    Before,
    /// Just after the matched element, in its direction.
    After,
    /// In the other direction: back to the sender of the matched element.
    Reply,
}

impl InjectAt {
    /// Whether this is the default, [`InjectAt::Before`].
    pub fn is_before(&self) -> bool {
        *self == InjectAt::Before
    }
}

/// How [`Action::Rewrite`] changes an element. Either `replace_with` alone, or any of the others.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    /// Attributes of the top-level start tag to set (added if absent), by name as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Attributes of the top-level start tag to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Direct children to remove, by local name or `{namespace}local`: e.g.
    /// `{urn:ietf:params:xml:ns:xmpp-tls}starttls` out of `<stream:features>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_children: Vec<String>,
    /// A regex replacement in every text node of the element.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace_text: Option<TextReplace>,
    /// XML that replaces the whole element; `{from}`, `{to}` and `{id}` as in [`Action::Inject`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace_with: Option<String>,
}

/// A regex replacement: every match of `pattern` becomes `with`, in which `$1` or `${name}` stand for groups
/// (the regex crate's `replace_all`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextReplace {
    /// The regex.
    pub pattern: String,
    /// The replacement.
    pub with: String,
}

/// Reads the fields of an action that has none, refusing any: serde would ignore them otherwise (it does for
/// unit variants of an internally tagged enum, `deny_unknown_fields` or not).
fn no_fields<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoFields {}
    NoFields::deserialize(deserializer).map(|NoFields {}| ())
}

/// The default condition of [`Action::Close`].
fn undefined_condition() -> String {
    "undefined-condition".to_owned()
}

/// For `skip_serializing_if`, which passes a reference.
fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_as_the_control_api_sends_it() {
        let json = r#"[
            {"name": "d", "match": {"element": "message", "direction": "up"}, "action": {"kind": "drop"}},
            {"name": "r", "action": {"kind": "rewrite", "set": {"type": "normal"}}},
            {"name": "c", "action": {"kind": "cut_after", "bytes": 10}}
        ]"#;
        let rules: Vec<Rule> = serde_json::from_str(json).expect("rules");
        assert_eq!(rules[0].matches.direction, Some(Dir::Up));
        assert_eq!(rules[0].action, Action::Drop);
        let printed = serde_json::to_string(&rules).expect("json");
        assert_eq!(
            serde_json::from_str::<Vec<Rule>>(&printed).expect("again"),
            rules
        );
        assert!(printed.contains(r#"{"kind":"drop"}"#), "{printed}");

        for bad in [
            r#"{"name": "x", "action": {"kind": "drop", "ms": 1}}"#,
            r#"{"name": "x", "action": {"kind": "reset", "now": true}}"#,
            r#"{"name": "x", "action": {"kind": "rewrite", "sett": {}}}"#,
            r#"{"name": "x", "match": {"direction": "sideways"}, "action": {"kind": "drop"}}"#,
        ] {
            assert!(serde_json::from_str::<Rule>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_stanza_counts() {
        let drop: Action = toml::from_str("kind = 'drop'").expect("drop");
        assert_eq!(drop.name(), "drop");
        assert!(drop.changes_stanza_count());
        let inject: Action = toml::from_str("kind = 'inject'\nxml = '<r/>'").expect("inject");
        assert!(inject.changes_stanza_count());
        let rewrite: Action =
            toml::from_str("kind = 'rewrite'\nreplace_with = '<r/>'").expect("rewrite");
        assert_eq!(rewrite.name(), "rewrite");
        assert!(!rewrite.changes_stanza_count());
        let cut: Action = toml::from_str("kind = 'cut_after'\nstanzas = 1").expect("cut");
        assert_eq!(cut.name(), "cut_after");
        assert!(!cut.changes_stanza_count());
    }
}
