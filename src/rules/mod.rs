//! Fault-injection rules: which elements to delay, drop, rewrite or answer, written as data and decided by a
//! pure function.
//!
//! A rule file (`xmpptap proxy --rules FILE`; reloaded on SIGHUP or through the control API) holds `[[rule]]`
//! tables. Each rule has a unique `name`, conditions under `[rule.match]` and an action under `[rule.action]`:
//!
//! ```toml
//! [[rule]]
//! name = "slow-messages"
//! [rule.match]                    # every condition is optional; all those given must hold
//! listener = "s2s"                # "s2s" | "c2s"
//! direction = "up"                # "up" (initiator -> receiver) | "down"
//! initiator = "*.a.example"       # glob on the initiating domain (`from` of the initiator's stream header)
//! receiver = "b.example"          # glob on the receiving domain (`to` of the initiator's stream header)
//! element = "message"             # local name of the top-level element (`result` matches `<db:result>`)
//! ns = "jabber:server"            # resolved namespace of the element
//! type = "chat"                   # the `type` attribute, exactly
//! attributes = { id = "ping-*" }  # attributes of the start tag, by name as written, each matching its glob
//! child = "{urn:xmpp:ping}ping"   # a direct child: local name, or {namespace}local
//! text = "hello.*world"           # regex searched in the element's text
//! after_stanzas = 3               # let 3 matching elements pass first
//! every = 2                       # then act on every 2nd match (default 1)
//! probability = 0.5               # then act with this probability (default 1.0)
//! [rule.action]
//! kind = "delay"
//! ms = 2000
//! jitter_ms = 100
//! ```
//!
//! An action may also be written inline: `action = { kind = "drop" }`. The actions are those of [`Action`]:
//! `drop`, `delay`, `rewrite`, `inject`, `close`, `stall`, `dialback_invalid`, `throttle`, `slice`,
//! `cut_after` and `reset`; `examples/rules/` has a commented file for each. Unknown fields are errors
//! everywhere, and [`RuleSet::parse`] checks what the types cannot (regexes compile, XML to send is one
//! well-formed element, numbers are in range); its errors name the rule and the problem.
//!
//! # Matching
//!
//! Rules see the top-level elements of a stream: stanzas, and stream-level elements such as features,
//! STARTTLS and dialback; never whitespace keepalives or the stream's open and close tags. They are tried in file order and the first
//! that acts wins; an element no rule acts on passes untouched, as its original bytes.
//!
//! - Globs (`initiator`, `receiver`, `attributes`) know `*` (any run of characters) and `?` (one character)
//!   and ignore case. A C2S stream has no initiating domain: only `*` matches it.
//! - `element`, `ns` and `type` compare exactly. `ns` is the namespace the element's prefix (or the default
//!   namespace) resolves to, through its own declarations and then the stream header's.
//! - `child` looks at direct children only. Unprefixed children without their own `xmlns` inherit the
//!   element's default namespace; under a prefixed element (`<db:result>`) that is the stream's, which
//!   `{namespace}local` cannot see, so give the local name alone there.
//! - `text` is a [regex](https://docs.rs/regex) searched in all descendant text and CDATA, concatenated, with
//!   references decoded (`&amp;` is `&`).
//!
//! The counters work per connection and direction, and only over elements that meet the other conditions:
//! with `after_stanzas = n` the first `n` of those pass, with `every = k` the rule then acts on the first
//! match and every `k`th after it (after 2, every 3: the 3rd, 6th, 9th...), and `probability` decides last.
//! A match that earlier rules let pass counts for later rules; one that an earlier rule acted on does not.
//! Counts start again when the rule set changes.
//!
//! # Stream management (XEP-0198)
//!
//! Stream management counts stanzas, and xmpptap does not rewrite the `h` counters of `<a/>`, `<resume/>` or
//! `<resumed/>`. On a stream where stream management is enabled, the relay therefore refuses rules whose
//! action changes how many stanzas a peer receives ([`Action::changes_stanza_count`]: `drop` and `inject`)
//! and lets the element pass, with a `rule` event saying why. Actions that keep the count work as anywhere
//! else: `rewrite` (even `replace_with`, one element for one), `delay`, `stall`, the shaping actions, and
//! those that end the connection (`close`, `cut_after`, `reset`).
//!
//! # Layout
//!
//! - [`spec`]: the rules as written: the serde types of a rule file.
//! - [`decide`]: rules compiled for matching, and [`RuleSet::decide`].
//! - [`edit`]: the byte edits `rewrite`, `dialback_invalid` and `inject` make.
//! - [`shared`]: [`SharedRules`], the rules in force, changed at runtime.
//!
//! This module does no I/O besides reading the rules file: the session and relay carry decisions out, the
//! control API changes rules through [`SharedRules`].

pub mod decide;
pub mod edit;
pub mod shared;
pub mod spec;

pub use decide::{Decision, RuleError, RuleSet, RuleState, Subject};
pub use edit::EditError;
pub use shared::SharedRules;
pub use spec::{Action, Dir, InjectAt, Listener, Match, RewriteSpec, Rule, RuleFile, TextReplace};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example file parses, and is named after the kind of one of its actions.
    #[test]
    fn example_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("examples/rules") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let rules = RuleSet::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stem = path.file_stem().and_then(|s| s.to_str()).expect("name");
            assert!(
                rules.rules().iter().any(|rule| rule.action.name() == stem),
                "{}: no rule with kind = {stem:?}",
                path.display()
            );
            assert!(
                text.starts_with('#'),
                "{}: begins with comments",
                path.display()
            );
            seen.push(stem.to_owned());
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "close",
                "cut_after",
                "delay",
                "dialback_invalid",
                "drop",
                "inject",
                "reset",
                "rewrite",
                "slice",
                "stall",
                "throttle"
            ]
        );
    }
}
