//! Rules compiled for matching, and the pure decision: which rule acts on an element, if any.
//!
//! [`RuleSet::parse`] reads and validates a rule file, compiling globs and regexes once; [`RuleSet::decide`]
//! holds an element up against the rules in file order. The per-connection-direction counts that
//! `after_stanzas` and `every` need live in a [`RuleState`] the caller keeps; the random number `probability`
//! needs comes from the caller too, so the decision itself is deterministic and does no I/O. Carrying the
//! decision out is the relay's job.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::edit::{check_one_element, has_child, text_content, ElementName};
use super::spec::{Action, Match, Rule, RuleFile};
use crate::config::ListenerKind;
use crate::side::Direction;
use crate::xml::element::{attributes, ElementHead};

/// The next [`RuleSet::generation`]. Starts at 1 so that a default [`RuleState`] (generation 0) never belongs to
/// a rule set.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Why rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// Not TOML, or not shaped like a rule file: an unknown or missing field, a wrong type.
    #[error("{}{error}", rule.as_ref().map(|rule| format!("rule {rule}: ")).unwrap_or_default())]
    Toml {
        /// Which rule, when known: its name in quotes, or its position (`#2`).
        rule: Option<String>,
        /// What toml said, with the line.
        error: toml::de::Error,
    },
    /// A rule that cannot work as written.
    #[error("rule {rule:?}: {reason}")]
    Invalid {
        /// The rule's name.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two rules share a name.
    #[error("two rules are named {0:?}; rule names must be unique")]
    Duplicate(String),
    /// The rules file could not be read.
    #[error("cannot read rules file {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The rules file was read, but its rules are wrong.
    #[error("rules file {}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: Box<RuleError>,
    },
}

/// What a rule is matched against: one top-level element (never whitespace, a stream open or a stream close).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The listener the connection came in on.
    pub listener: ListenerKind,
    /// The direction the element travels.
    pub dir: Direction,
    /// The initiating domain: `from` of the initiator's stream header (none on C2S).
    pub initiator: Option<&'a str>,
    /// The receiving domain: `to` of the initiator's stream header.
    pub receiver: Option<&'a str>,
    /// The parsed start tag.
    pub head: &'a ElementHead,
    /// The start tag's bytes.
    pub tag: &'a [u8],
    /// The whole element's bytes.
    pub bytes: &'a [u8],
}

/// Rules ready for matching: validated, with globs and regexes compiled.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// One per rule, in the same order.
    compiled: Vec<Compiled>,
    generation: u64,
}

/// The rule that acts on an element, and how.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'r> {
    /// The rule.
    pub rule: &'r Rule,
    /// Its action.
    pub action: &'r Action,
}

/// What [`RuleSet::decide`] remembers for one direction of one connection: how many elements have matched each
/// rule. It resets itself when used with a rule set of another generation.
#[derive(Debug, Default, Clone)]
pub struct RuleState {
    generation: u64,
    matched: Vec<u64>,
}

impl RuleSet {
    /// No rules.
    pub fn empty() -> Self {
        RuleSet {
            rules: Vec::new(),
            compiled: Vec::new(),
            generation: next_generation(),
        }
    }

    /// Parses and validates a rule file.
    pub fn parse(toml: &str) -> Result<Self, RuleError> {
        Self::from_rules(parse_rules(toml)?)
    }

    /// Validates and compiles `rules`: names are unique and non-empty, regexes compile, `probability` is in
    /// `0.0..=1.0`, `every` is at least 1, XML to send is one well-formed element, and each action's numbers
    /// make sense.
    pub fn from_rules(rules: Vec<Rule>) -> Result<Self, RuleError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            if rules[..index]
                .iter()
                .any(|earlier| earlier.name == rule.name)
            {
                return Err(RuleError::Duplicate(rule.name.clone()));
            }
            let invalid = |reason| RuleError::Invalid {
                rule: rule.name.clone(),
                reason,
            };
            if rule.name.trim().is_empty() {
                return Err(invalid("the name is empty".to_owned()));
            }
            compiled.push(Compiled::new(&rule.matches).map_err(invalid)?);
            check_action(&rule.action).map_err(invalid)?;
        }
        Ok(RuleSet {
            rules,
            compiled,
            generation: next_generation(),
        })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules as a rule file, which [`RuleSet::parse`] reads back to the same rules.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Printed<'a> {
            #[serde(rename = "rule", skip_serializing_if = "<[Rule]>::is_empty")]
            rules: &'a [Rule],
        }
        match toml::to_string(&Printed { rules: &self.rules }) {
            Ok(text) => text,
            // Every field of a rule is a string, number, table or array of those, which TOML can hold.
            Err(e) => format!("# the rules cannot be printed as TOML: {e}\n"),
        }
    }

    /// Tells this rule set from every other built in this process; [`RuleState`] resets when it changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The first rule (in file order) whose conditions hold for `subject` and whose `after_stanzas`, `every`
    /// and `probability` let it act now, with its action.
    ///
    /// Counts a match in `state` for every rule whose conditions hold, up to the one that acts: rules after
    /// it do not see the element. `roll` is called only for a rule whose probability is strictly between 0
    /// and 1, and must return a uniform number in `[0, 1)`.
    pub fn decide<'r>(
        &'r self,
        subject: &Subject<'_>,
        state: &mut RuleState,
        roll: &mut dyn FnMut() -> f64,
    ) -> Option<Decision<'r>> {
        state.follow(self);
        for ((rule, compiled), matched) in self
            .rules
            .iter()
            .zip(&self.compiled)
            .zip(&mut state.matched)
        {
            if !compiled.holds(&rule.matches, subject) {
                continue;
            }
            let earlier = *matched;
            *matched += 1;
            if compiled.acts(earlier, roll) {
                return Some(Decision {
                    rule,
                    action: &rule.action,
                });
            }
        }
        None
    }
}

impl RuleState {
    /// How many elements have matched the `index`th rule of the rule set last used with this state.
    pub fn matched(&self, index: usize) -> u64 {
        self.matched.get(index).copied().unwrap_or(0)
    }

    /// Starts counting afresh if `rules` is not the rule set these counts are for.
    fn follow(&mut self, rules: &RuleSet) {
        if self.generation != rules.generation || self.matched.len() != rules.rules.len() {
            self.generation = rules.generation;
            self.matched = vec![0; rules.rules.len()];
        }
    }
}

/// Reads a rule file's rules without validating them beyond their shape.
pub(super) fn parse_rules(text: &str) -> Result<Vec<Rule>, RuleError> {
    toml::from_str::<RuleFile>(text)
        .map(|file| file.rules)
        .map_err(|error| RuleError::Toml {
            rule: error.span().and_then(|span| rule_at(text, span.start)),
            error,
        })
}

/// Which rule of a rule file the byte at `offset` belongs to: its name in quotes, or `#n` when it has none.
/// Found by counting `[[rule]]` headers, so `None` for other layouts.
fn rule_at(text: &str, offset: usize) -> Option<String> {
    #[derive(Deserialize)]
    struct Names {
        #[serde(default)]
        rule: Vec<Named>,
    }
    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
    }

    // Up to the end of the line: toml puts some errors (a missing field) on the `[[rule]]` header itself.
    let line_end = text
        .get(offset..)?
        .find('\n')
        .map_or(text.len(), |n| offset + n);
    let headers = text
        .get(..line_end)?
        .lines()
        .filter(|line| line.trim_start().starts_with("[[rule]]"))
        .count();
    let index = headers.checked_sub(1)?;
    let name = toml::from_str::<Names>(text)
        .ok()
        .and_then(|names| names.rule.into_iter().nth(index)?.name);
    Some(match name {
        Some(name) => format!("{name:?}"),
        None => format!("#{}", index + 1),
    })
}

fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// The parts of a [`Match`] that need compiling, and its counters with their defaults filled in.
#[derive(Debug)]
struct Compiled {
    initiator: Option<Glob>,
    receiver: Option<Glob>,
    attributes: Vec<(String, Glob)>,
    child: Option<ElementName>,
    text: Option<Regex>,
    after: u64,
    every: u64,
    probability: f64,
}

impl Compiled {
    /// Compiles `m`; the error says what is wrong.
    fn new(m: &Match) -> Result<Self, String> {
        if let Some(element) = &m.element {
            if element.contains(':') || element.starts_with('{') {
                return Err(format!(
                    "element {element:?}: give the local name (`result` matches `<db:result>`) and the \
                     namespace in `ns`"
                ));
            }
        }
        let probability = m.probability.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&probability) {
            return Err(format!(
                "probability {probability} is not between 0.0 and 1.0"
            ));
        }
        let every = m.every.unwrap_or(1);
        if every == 0 {
            return Err("every = 0 would never act; 1 acts on every match".to_owned());
        }
        Ok(Compiled {
            initiator: m.initiator.as_deref().map(Glob::new).transpose()?,
            receiver: m.receiver.as_deref().map(Glob::new).transpose()?,
            attributes: m
                .attributes
                .iter()
                .map(|(name, glob)| Ok((name.clone(), Glob::new(glob)?)))
                .collect::<Result<_, String>>()?,
            child: m.child.as_deref().map(ElementName::parse).transpose()?,
            text: m
                .text
                .as_deref()
                .map(|text| Regex::new(text).map_err(|e| format!("text: bad regex: {e}")))
                .transpose()?,
            after: m.after_stanzas.unwrap_or(0),
            every,
            probability,
        })
    }

    /// Whether `subject` meets the conditions: the cheap ones first, those that read the element last.
    fn holds(&self, m: &Match, subject: &Subject<'_>) -> bool {
        let head = subject.head;
        let equals = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|want| Some(want) == have)
        };
        m.listener.is_none_or(|l| l.matches(subject.listener))
            && m.direction.is_none_or(|d| d.matches(subject.dir))
            && equals(&m.element, Some(&head.local))
            && equals(&m.kind, head.kind.as_deref())
            && equals(&m.ns, head.ns.as_deref())
            && self
                .initiator
                .as_ref()
                .is_none_or(|g| g.matches(subject.initiator))
            && self
                .receiver
                .as_ref()
                .is_none_or(|g| g.matches(subject.receiver))
            && self.attributes_hold(subject.tag)
            && self.child_holds(subject)
            && self.text_holds(subject.bytes)
    }

    fn attributes_hold(&self, tag: &[u8]) -> bool {
        if self.attributes.is_empty() {
            return true;
        }
        let Ok(present) = attributes(tag) else {
            return false;
        };
        self.attributes.iter().all(|(name, glob)| {
            present
                .iter()
                .any(|(key, value)| key == name && glob.matches(Some(value)))
        })
    }

    fn child_holds(&self, subject: &Subject<'_>) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        // Children inherit the default namespace in scope at the element. For an unprefixed element that is
        // the element's own namespace; under a prefix it is the stream's, which is not known here.
        let default_ns = if subject.head.name.contains(':') {
            None
        } else {
            subject.head.ns.as_deref()
        };
        has_child(subject.bytes, default_ns, child).unwrap_or(false)
    }

    fn text_holds(&self, bytes: &[u8]) -> bool {
        let Some(regex) = &self.text else {
            return true;
        };
        text_content(bytes).is_ok_and(|text| regex.is_match(&text))
    }

    /// Whether the rule acts on a match that `earlier` matches have preceded.
    fn acts(&self, earlier: u64, roll: &mut dyn FnMut() -> f64) -> bool {
        let Some(eligible) = earlier.checked_sub(self.after) else {
            return false;
        };
        if eligible % self.every != 0 {
            return false;
        }
        if self.probability >= 1.0 {
            true
        } else if self.probability <= 0.0 {
            false
        } else {
            roll() < self.probability
        }
    }
}

/// Checks what [`Action`]'s types cannot say; the error says what is wrong.
fn check_action(action: &Action) -> Result<(), String> {
    match action {
        Action::Rewrite(spec) => {
            let edits = !spec.set.is_empty()
                || !spec.remove.is_empty()
                || !spec.remove_children.is_empty()
                || spec.replace_text.is_some();
            match &spec.replace_with {
                Some(_) if edits => return Err(
                    "rewrite: replace_with replaces the whole element, so it cannot be combined \
                                with set, remove, remove_children or replace_text"
                        .to_owned(),
                ),
                Some(xml) => check_xml("rewrite: replace_with", xml)?,
                None if !edits => return Err("rewrite: nothing to change".to_owned()),
                None => {}
            }
            for name in spec.set.keys().chain(&spec.remove) {
                if name.is_empty()
                    || name.contains(|c: char| c.is_whitespace() || "<>&'\"=/{}".contains(c))
                {
                    return Err(format!("rewrite: {name:?} is not an attribute name"));
                }
            }
            for name in &spec.remove_children {
                ElementName::parse(name).map_err(|e| format!("rewrite: remove_children: {e}"))?;
            }
            if let Some(replace) = &spec.replace_text {
                Regex::new(&replace.pattern)
                    .map_err(|e| format!("rewrite: replace_text: bad regex: {e}"))?;
            }
        }
        Action::Inject { xml, .. } => check_xml("inject: xml", xml)?,
        Action::Close { condition, .. } => {
            if crate::xml::element::stream_condition(condition).is_none() {
                return Err(format!(
                    "close: condition {condition:?} is not a stream error condition of RFC 6120 such as \
                     `policy-violation` (one of: {})",
                    crate::xml::element::STREAM_CONDITIONS.join(", ")
                ));
            }
        }
        Action::Throttle { bytes_per_sec: 0 } => {
            return Err(
                "throttle: bytes_per_sec must be more than 0 (stall stops a direction)".to_owned(),
            )
        }
        Action::Slice { bytes: 0, .. } => return Err("slice: bytes must be more than 0".to_owned()),
        Action::CutAfter {
            bytes: None,
            stanzas: None,
        } => return Err("cut_after: give bytes, stanzas or both".to_owned()),
        Action::CutAfter {
            stanzas: Some(0), ..
        }
        | Action::CutAfter { bytes: Some(0), .. } => {
            return Err(
                "cut_after: bytes and stanzas count from the matched element: give at least 1 (reset ends a connection at once)"
                    .to_owned(),
            )
        }
        Action::Drop
        | Action::Delay { .. }
        | Action::Stall { .. }
        | Action::DialbackInvalid
        | Action::Throttle { .. }
        | Action::Slice { .. }
        | Action::CutAfter { .. }
        | Action::Reset => {}
    }
    Ok(())
}

/// Checks XML a rule sends, with its placeholders filled in.
fn check_xml(what: &str, xml: &str) -> Result<(), String> {
    let filled = ["{from}", "{to}", "{id}"]
        .iter()
        .fold(xml.to_owned(), |xml, placeholder| {
            xml.replace(placeholder, "x")
        });
    check_one_element(&filled).map_err(|e| format!("{what} is not one well-formed element: {e}"))
}

/// A glob: `*` stands for any run of characters, `?` for one; case is ignored.
#[derive(Debug)]
struct Glob {
    regex: Regex,
    /// Only `*`s: matches an absent value too.
    any: bool,
}

impl Glob {
    fn new(pattern: &str) -> Result<Self, String> {
        let mut regex = String::with_capacity(pattern.len() + 8);
        regex.push_str("(?is)^");
        for c in pattern.chars() {
            match c {
                '*' => regex.push_str(".*"),
                '?' => regex.push('.'),
                c => regex.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
            }
        }
        regex.push('$');
        Ok(Glob {
            regex: Regex::new(&regex).map_err(|e| format!("glob {pattern:?}: {e}"))?,
            any: !pattern.is_empty() && pattern.chars().all(|c| c == '*'),
        })
    }

    fn matches(&self, value: Option<&str>) -> bool {
        value.map_or(self.any, |value| self.regex.is_match(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::element::StreamHeader;

    const HEADER: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
        xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='a.example' to='b.example' id='s1'>";

    /// Where an element travels in a test.
    #[derive(Clone, Copy)]
    struct On {
        listener: ListenerKind,
        dir: Direction,
        initiator: Option<&'static str>,
        receiver: Option<&'static str>,
    }

    const S2S_UP: On = On {
        listener: ListenerKind::S2s,
        dir: Direction::Up,
        initiator: Some("chat.a.example"),
        receiver: Some("b.example"),
    };
    const S2S_DOWN: On = On {
        dir: Direction::Down,
        ..S2S_UP
    };
    const C2S_UP: On = On {
        listener: ListenerKind::C2s,
        dir: Direction::Up,
        initiator: None,
        receiver: Some("b.example"),
    };

    fn rule(matches: &str, action: &str) -> RuleSet {
        RuleSet::parse(&format!(
            "[[rule]]\nname = 'r'\n[rule.match]\n{matches}\n[rule.action]\n{action}\n"
        ))
        .unwrap_or_else(|e| panic!("{matches}: {e}"))
    }

    /// Runs `rules` over `element` as sent `on`, with a roll that is always `roll`.
    fn decide<'r>(
        rules: &'r RuleSet,
        state: &mut RuleState,
        element: &str,
        on: On,
        roll: f64,
    ) -> Option<&'r str> {
        let stream = StreamHeader::parse(HEADER).expect("header");
        let head = ElementHead::parse(element.as_bytes(), &stream).expect("head");
        let tag_end = element.find('>').expect("a tag") + 1;
        let subject = Subject {
            listener: on.listener,
            dir: on.dir,
            initiator: on.initiator,
            receiver: on.receiver,
            head: &head,
            tag: &element.as_bytes()[..tag_end],
            bytes: element.as_bytes(),
        };
        rules
            .decide(&subject, state, &mut || roll)
            .map(|decision| decision.rule.name.as_str())
    }

    fn matches(rules: &RuleSet, element: &str, on: On) -> bool {
        decide(rules, &mut RuleState::default(), element, on, 0.0).is_some()
    }

    const MESSAGE: &str = "<message type='chat' id='ping-7' from='alice@chat.a.example/x' to='bob@b.example' \
        xml:lang='en'><body>hello &amp; good&#x20;world</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>";
    const PING: &str = "<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>";
    const RESULT: &str = "<db:result from='b.example' to='a.example' type='valid'/>";
    const FEATURES: &str =
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>";

    #[test]
    fn matching_table() {
        let rows: &[(&str, &str, On, bool)] = &[
            ("", MESSAGE, S2S_UP, true),
            ("", RESULT, C2S_UP, true),
            ("listener = 's2s'", MESSAGE, S2S_UP, true),
            ("listener = 's2s'", MESSAGE, C2S_UP, false),
            ("listener = 'c2s'", MESSAGE, C2S_UP, true),
            ("direction = 'up'", MESSAGE, S2S_UP, true),
            ("direction = 'up'", MESSAGE, S2S_DOWN, false),
            ("direction = 'down'", MESSAGE, S2S_DOWN, true),
            ("initiator = '*.a.example'", MESSAGE, S2S_UP, true),
            ("initiator = '*.A.EXAMPLE'", MESSAGE, S2S_UP, true),
            ("initiator = 'a.example'", MESSAGE, S2S_UP, false),
            ("initiator = 'chat.?.example'", MESSAGE, S2S_UP, true),
            ("initiator = 'chat.??.example'", MESSAGE, S2S_UP, false),
            ("initiator = '*'", MESSAGE, C2S_UP, true),
            ("initiator = '*.example'", MESSAGE, C2S_UP, false),
            ("receiver = 'b.example'", MESSAGE, S2S_UP, true),
            ("receiver = 'b.ex'", MESSAGE, S2S_UP, false),
            ("element = 'message'", MESSAGE, S2S_UP, true),
            ("element = 'iq'", MESSAGE, S2S_UP, false),
            ("element = 'result'", RESULT, S2S_UP, true),
            ("element = 'features'", FEATURES, S2S_DOWN, true),
            ("ns = 'jabber:server:dialback'", RESULT, S2S_UP, true),
            ("ns = 'jabber:server'", RESULT, S2S_UP, false),
            ("ns = 'jabber:server'", MESSAGE, S2S_UP, true),
            (
                "element = 'result'\nns = 'jabber:server:dialback'\ntype = 'valid'",
                RESULT,
                S2S_DOWN,
                true,
            ),
            ("type = 'chat'", MESSAGE, S2S_UP, true),
            ("type = 'Chat'", MESSAGE, S2S_UP, false),
            ("type = 'chat'", PING, S2S_UP, false),
            ("attributes = { id = 'ping-*' }", MESSAGE, S2S_UP, true),
            ("attributes = { id = 'ping-?' }", MESSAGE, S2S_UP, true),
            ("attributes = { id = 'pong-*' }", MESSAGE, S2S_UP, false),
            (
                "attributes = { 'xml:lang' = 'en', from = 'alice@*' }",
                MESSAGE,
                S2S_UP,
                true,
            ),
            (
                "attributes = { 'xml:lang' = 'en', from = 'bob@*' }",
                MESSAGE,
                S2S_UP,
                false,
            ),
            ("attributes = { missing = '*' }", MESSAGE, S2S_UP, false),
            ("child = 'body'", MESSAGE, S2S_UP, true),
            ("child = '{jabber:server}body'", MESSAGE, S2S_UP, true),
            ("child = '{jabber:client}body'", MESSAGE, S2S_UP, false),
            (
                "child = '{http://jabber.org/protocol/chatstates}active'",
                MESSAGE,
                S2S_UP,
                true,
            ),
            ("child = 'ping'", PING, S2S_UP, true),
            ("child = '{urn:xmpp:ping}ping'", PING, S2S_UP, true),
            ("child = '{urn:xmpp:pong}ping'", PING, S2S_UP, false),
            ("child = 'body'", PING, S2S_UP, false),
            ("child = 'starttls'", FEATURES, S2S_DOWN, true),
            ("text = 'hello & good world'", MESSAGE, S2S_UP, true),
            ("text = '^hello.*world$'", MESSAGE, S2S_UP, true),
            ("text = 'goodbye'", MESSAGE, S2S_UP, false),
            ("text = 'hello'", PING, S2S_UP, false),
            (
                "element = 'message'\ndirection = 'up'\ntext = 'hello'",
                MESSAGE,
                S2S_DOWN,
                false,
            ),
        ];
        for (conditions, element, on, expected) in rows {
            let rules = rule(conditions, "kind = 'drop'");
            assert_eq!(
                matches(&rules, element, *on),
                *expected,
                "{conditions} on {element}"
            );
        }
    }

    #[test]
    fn after_every_and_probability() {
        let mut state = RuleState::default();
        let rules = rule(
            "element = 'message'\nafter_stanzas = 2\nevery = 3",
            "kind = 'drop'",
        );
        let acted: Vec<bool> = (0..10)
            .map(|_| decide(&rules, &mut state, MESSAGE, S2S_UP, 0.0).is_some())
            .collect();
        // Two pass, then the first eligible match acts, and every third after it.
        assert_eq!(
            acted,
            [false, false, true, false, false, true, false, false, true, false]
        );
        // Elements that do not match are not counted.
        assert_eq!(decide(&rules, &mut state, PING, S2S_UP, 0.0), None);
        assert_eq!(state.matched(0), 10);

        let rules = rule("probability = 0.25", "kind = 'drop'");
        let mut state = RuleState::default();
        assert!(decide(&rules, &mut state, PING, S2S_UP, 0.2).is_some());
        assert!(decide(&rules, &mut state, PING, S2S_UP, 0.25).is_none());
        // A certain or impossible rule never rolls.
        for (p, acts) in [(1.0, true), (0.0, false)] {
            let rules = rule(&format!("probability = {p:?}"), "kind = 'drop'");
            let decision = rules.decide(
                &Subject {
                    listener: ListenerKind::S2s,
                    dir: Direction::Up,
                    initiator: None,
                    receiver: None,
                    head: &ElementHead::parse(b"<iq/>", &StreamHeader::default()).expect("head"),
                    tag: b"<iq/>",
                    bytes: b"<iq/>",
                },
                &mut RuleState::default(),
                &mut || panic!("rolled"),
            );
            assert_eq!(decision.is_some(), acts);
        }
    }

    #[test]
    fn first_acting_rule_wins_and_later_rules_do_not_count_it() {
        let rules = RuleSet::parse(
            "[[rule]]\nname = 'second-message'\nmatch = { element = 'message', after_stanzas = 1 }\naction = { kind = 'drop' }\n\
             [[rule]]\nname = 'any'\naction = { kind = 'delay', ms = 5 }\n",
        )
        .expect("rules");
        let mut state = RuleState::default();
        assert_eq!(
            decide(&rules, &mut state, MESSAGE, S2S_UP, 0.0),
            Some("any")
        );
        assert_eq!(
            decide(&rules, &mut state, MESSAGE, S2S_UP, 0.0),
            Some("second-message")
        );
        assert_eq!(decide(&rules, &mut state, PING, S2S_UP, 0.0), Some("any"));
        assert_eq!((state.matched(0), state.matched(1)), (2, 2));
    }

    #[test]
    fn state_resets_with_a_new_generation() {
        let text =
            "[[rule]]\nname = 'once'\nmatch = { every = 1000 }\naction = { kind = 'drop' }\n";
        let first = RuleSet::parse(text).expect("rules");
        let mut state = RuleState::default();
        assert!(decide(&first, &mut state, PING, S2S_UP, 0.0).is_some());
        assert!(decide(&first, &mut state, PING, S2S_UP, 0.0).is_none());
        let second = RuleSet::parse(text).expect("rules");
        assert_ne!(first.generation(), second.generation());
        assert!(decide(&second, &mut state, PING, S2S_UP, 0.0).is_some());
        assert_eq!(state.matched(0), 1);
        assert_ne!(RuleSet::empty().generation(), RuleSet::empty().generation());
        assert!(RuleSet::empty().is_empty());
    }

    #[test]
    fn parse_errors_name_the_rule_and_the_problem() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[[rule]]\nname = 'ok'\naction = { kind = 'drop' }\n[[rule]]\nname = 'typo'\n[rule.match]\nelemnt = 'message'\n[rule.action]\nkind = 'drop'\n",
                &["rule \"typo\"", "unknown field `elemnt`"],
            ),
            (
                "[[rule]]\nname = 'bad-kind'\naction = { kind = 'explode' }\n",
                &["rule \"bad-kind\"", "explode"],
            ),
            (
                "[[rule]]\nname = 'extra'\naction = { kind = 'delay', ms = 1, seconds = 2 }\n",
                &["rule \"extra\"", "seconds"],
            ),
            ("[[rule]]\naction = { kind = 'drop' }\n", &["rule #1", "missing field `name`"]),
            (
                "[[rule]]\nname = 'unit'\naction = { kind = 'drop', ms = 5 }\n",
                &["rule \"unit\"", "ms"],
            ),
            (
                "[[rule]]\nname = 're'\nmatch = { text = 'a(b' }\naction = { kind = 'drop' }\n",
                &["rule \"re\"", "text: bad regex"],
            ),
            (
                "[[rule]]\nname = 'twice'\naction = { kind = 'drop' }\n[[rule]]\nname = 'twice'\naction = { kind = 'reset' }\n",
                &["\"twice\"", "unique"],
            ),
            (
                "[[rule]]\nname = 'p'\nmatch = { probability = 1.5 }\naction = { kind = 'drop' }\n",
                &["rule \"p\"", "probability 1.5"],
            ),
            (
                "[[rule]]\nname = 'e'\nmatch = { every = 0 }\naction = { kind = 'drop' }\n",
                &["rule \"e\"", "every = 0"],
            ),
            (
                "[[rule]]\nname = 'cut'\naction = { kind = 'cut_after' }\n",
                &["rule \"cut\"", "cut_after: give bytes, stanzas or both"],
            ),
            (
                "[[rule]]\nname = 'inj'\naction = { kind = 'inject', xml = '<message><body></message>' }\n",
                &["rule \"inj\"", "inject: xml is not one well-formed element"],
            ),
            (
                "[[rule]]\nname = 'rw'\naction = { kind = 'rewrite', replace_with = '<a/><b/>' }\n",
                &["rule \"rw\"", "replace_with is not one well-formed element"],
            ),
            (
                "[[rule]]\nname = 'rw2'\naction = { kind = 'rewrite', set = { id = 'x' }, replace_with = '<a/>' }\n",
                &["rule \"rw2\"", "cannot be combined"],
            ),
            ("[[rule]]\nname = 'rw3'\naction = { kind = 'rewrite' }\n", &["rule \"rw3\"", "nothing to change"]),
            (
                "[[rule]]\nname = 't'\naction = { kind = 'throttle', bytes_per_sec = 0 }\n",
                &["rule \"t\"", "bytes_per_sec must be more than 0"],
            ),
            (
                "[[rule]]\nname = 's'\naction = { kind = 'slice', bytes = 0 }\n",
                &["rule \"s\"", "slice: bytes must be more than 0"],
            ),
            (
                "[[rule]]\nname = 'c'\naction = { kind = 'close', condition = 'Policy Violation' }\n",
                &["rule \"c\"", "not a stream error condition"],
            ),
            (
                "[[rule]]\nname = 'db'\nmatch = { element = 'db:result' }\naction = { kind = 'drop' }\n",
                &["rule \"db\"", "local name"],
            ),
            (
                "[[rule]]\nname = 'child'\nmatch = { child = '{urn:x' }\naction = { kind = 'drop' }\n",
                &["rule \"child\"", "without"],
            ),
            ("[[rules]]\nname = 'x'\n", &["unknown field `rules`"]),
        ];
        for (text, expected) in cases {
            let error = RuleSet::parse(text).expect_err(text).to_string();
            for part in *expected {
                assert!(error.contains(part), "{text}\n=> {error}\nlacks {part:?}");
            }
        }
    }

    #[test]
    fn prints_back() {
        let text = r#"
            [[rule]]
            name = "everything"
            [rule.match]
            listener = "s2s"
            direction = "down"
            initiator = "*.a.example"
            receiver = "b.example"
            element = "message"
            ns = "jabber:server"
            type = "chat"
            attributes = { id = "ping-*", "xml:lang" = "en" }
            child = "{urn:xmpp:ping}ping"
            text = "hello.*world"
            after_stanzas = 3
            every = 2
            probability = 0.5
            [rule.action]
            kind = "delay"
            ms = 2000
            jitter_ms = 100

            [[rule]]
            name = "rewrite"
            action = { kind = "rewrite", set = { type = "normal" }, remove = ["id"], remove_children = ["{urn:ietf:params:xml:ns:xmpp-tls}starttls"], replace_text = { pattern = "a(.)", with = "b$1" } }
            [[rule]]
            name = "inject"
            action = { kind = "inject", xml = "<message from='{to}' to='{from}'/>", at = "reply" }
            [[rule]]
            name = "close"
            action = { kind = "close" }
            [[rule]]
            name = "stall"
            action = { kind = "stall" }
            [[rule]]
            name = "others"
            match = { every = 1 }
            action = { kind = "cut_after", stanzas = 2 }
        "#;
        let rules = RuleSet::parse(text).expect("rules");
        assert_eq!(
            rules.rules()[3].action,
            Action::Close {
                condition: "undefined-condition".to_owned(),
                text: None
            }
        );
        let printed = rules.to_toml();
        let again = RuleSet::parse(&printed).unwrap_or_else(|e| panic!("{printed}\n{e}"));
        assert_eq!(rules.rules(), again.rules(), "{printed}");
        assert_eq!(printed, again.to_toml());
        assert_eq!(RuleSet::empty().to_toml(), "");
        assert!(RuleSet::parse("").expect("no rules").is_empty());
    }
}
