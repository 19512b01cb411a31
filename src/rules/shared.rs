//! The rules in force, shared by every connection and changed by the control API and SIGHUP.
//!
//! [`SharedRules`] keeps two lists: the rules read from the `--rules` file and those added at runtime, which
//! come after the file's. Every change builds a new [`RuleSet`] from both and swaps it in whole; a change
//! that does not validate leaves the old set in force. Connections take the current set with
//! [`SharedRules::current`] for each batch of elements, so a change applies from the next batch on, and the
//! new set's generation makes their [`super::RuleState`] counts start afresh.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::decide::{parse_rules, RuleError, RuleSet};
use super::spec::Rule;

/// The rules in force, and where they came from.
#[derive(Debug)]
pub struct SharedRules {
    /// The `--rules` file, if any.
    path: Option<PathBuf>,
    /// What connections read: swapped whole on every change.
    current: RwLock<Arc<RuleSet>>,
    /// What the current set was built from. Held while a change is made, so changes do not interleave.
    sources: Mutex<Sources>,
}

/// The two lists a rule set is built from, file rules first.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sources {
    file: Vec<Rule>,
    runtime: Vec<Rule>,
}

impl Default for SharedRules {
    /// No file and no rules.
    fn default() -> Self {
        SharedRules {
            path: None,
            current: RwLock::new(Arc::new(RuleSet::empty())),
            sources: Mutex::new(Sources::default()),
        }
    }
}

impl SharedRules {
    /// The rules of the file at `path`, or none without one.
    pub fn new(path: Option<PathBuf>) -> Result<Self, RuleError> {
        let shared = SharedRules {
            path,
            ..SharedRules::default()
        };
        shared.reload()?;
        Ok(shared)
    }

    /// The rules in force: a read lock and an `Arc` clone.
    pub fn current(&self) -> Arc<RuleSet> {
        // Only a finished swap ever happens under the write lock, so a poisoned lock still holds a whole set.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again; the rules added at runtime stay, after the file's. On error the rules in force
    /// stay. Returns how many rules are now in force.
    pub fn reload(&self) -> Result<usize, RuleError> {
        self.change(|sources| {
            sources.file = self.read_file()?;
            Ok(())
        })
    }

    /// Adds a rule after all others. Its name must be new.
    pub fn add(&self, rule: Rule) -> Result<(), RuleError> {
        self.change(|sources| {
            let taken = sources
                .file
                .iter()
                .chain(&sources.runtime)
                .any(|r| r.name == rule.name);
            if taken {
                return Err(RuleError::Duplicate(rule.name));
            }
            sources.runtime.push(rule);
            Ok(())
        })
        .map(|_| ())
    }

    /// Removes the rule named `name`, whether it was added at runtime or read from the file (a file rule comes
    /// back with the next [`reload`](Self::reload)). Returns whether there was one.
    pub fn remove(&self, name: &str) -> bool {
        let mut found = false;
        let changed = self.change(|sources| {
            let before = sources.file.len() + sources.runtime.len();
            sources.runtime.retain(|rule| rule.name != name);
            sources.file.retain(|rule| rule.name != name);
            found = sources.file.len() + sources.runtime.len() < before;
            Ok(())
        });
        // Removing rules from a valid set leaves a valid set, so `changed` is not an error in practice.
        found && changed.is_ok()
    }

    /// Drops the rules added at runtime and reads the file again. On error nothing changes. Returns how many
    /// rules are now in force.
    pub fn reset(&self) -> Result<usize, RuleError> {
        self.change(|sources| {
            sources.file = self.read_file()?;
            sources.runtime.clear();
            Ok(())
        })
    }

    /// The `--rules` file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Applies `edit` to a copy of the sources and, if the result validates, puts it in force. Returns how
    /// many rules are in force. When the rules come out the same, the set in force stays, and so do the
    /// connections' counts.
    fn change(
        &self,
        edit: impl FnOnce(&mut Sources) -> Result<(), RuleError>,
    ) -> Result<usize, RuleError> {
        // Sources are replaced only after a set built from them validated: a poisoned lock holds valid ones.
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = sources.clone();
        edit(&mut next)?;
        if next == *sources {
            return Ok(next.file.len() + next.runtime.len());
        }
        let set = self.build(&next)?;
        let count = set.rules().len();
        *sources = next;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        Ok(count)
    }

    /// The rule set of `sources`: the file's rules are checked on their own first, so that their errors name
    /// the file.
    fn build(&self, sources: &Sources) -> Result<RuleSet, RuleError> {
        if let Some(path) = &self.path {
            RuleSet::from_rules(sources.file.clone()).map_err(|error| in_file(path, error))?;
        }
        let all = sources
            .file
            .iter()
            .chain(&sources.runtime)
            .cloned()
            .collect();
        RuleSet::from_rules(all).map_err(|error| match error {
            RuleError::Duplicate(name) => RuleError::Invalid {
                rule: name,
                reason:
                    "the rules file and the rules added at runtime both have a rule of this name; \
                         remove the runtime one first"
                        .to_owned(),
            },
            error => error,
        })
    }

    /// The rules of the file, none without one.
    fn read_file(&self) -> Result<Vec<Rule>, RuleError> {
        let Some(path) = &self.path else {
            return Ok(Vec::new());
        };
        let text = std::fs::read_to_string(path).map_err(|error| RuleError::Io {
            path: path.clone(),
            error,
        })?;
        parse_rules(&text).map_err(|error| in_file(path, error))
    }
}

/// `error`, said to come from the rules file at `path`.
fn in_file(path: &Path, error: RuleError) -> RuleError {
    RuleError::File {
        path: path.to_owned(),
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rules file in a fresh temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str, text: &str) -> TempFile {
            let dir =
                std::env::temp_dir().join(format!("xmpptap-rules-{}-{tag}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join("rules.toml");
            std::fs::write(&path, text).expect("write");
            TempFile(path)
        }

        fn write(&self, text: &str) {
            std::fs::write(&self.0, text).expect("write");
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn rule(name: &str) -> Rule {
        Rule {
            name: name.to_owned(),
            matches: Default::default(),
            action: crate::rules::Action::Drop,
        }
    }

    fn names(shared: &SharedRules) -> Vec<String> {
        shared
            .current()
            .rules()
            .iter()
            .map(|r| r.name.clone())
            .collect()
    }

    #[test]
    fn file_and_runtime_rules() {
        let file = TempFile::new("mix", "[[rule]]\nname = 'f1'\naction = { kind = 'drop' }\n");
        let shared = SharedRules::new(Some(file.0.clone())).expect("loads");
        assert_eq!(shared.path(), Some(file.0.as_path()));
        assert_eq!(names(&shared), ["f1"]);

        shared.add(rule("r1")).expect("added");
        assert!(matches!(shared.add(rule("f1")), Err(RuleError::Duplicate(n)) if n == "f1"));
        assert_eq!(names(&shared), ["f1", "r1"]);

        // Reload keeps runtime rules after the file's; a bad file keeps everything.
        file.write("[[rule]]\nname = 'f2'\naction = { kind = 'reset' }\n");
        let generation = shared.current().generation();
        assert_eq!(shared.reload().expect("reloads"), 2);
        assert_eq!(names(&shared), ["f2", "r1"]);
        assert_ne!(shared.current().generation(), generation);
        // Nothing changed, so the set in force (and the connections' counts) stay.
        let generation = shared.current().generation();
        assert_eq!(shared.reload().expect("reloads"), 2);
        assert!(!shared.remove("no-such-rule"));
        assert_eq!(shared.current().generation(), generation);
        file.write("[[rule]]\nname = 'f3'\naction = { kind = 'nope' }\n");
        let error = shared.reload().expect_err("bad file").to_string();
        assert!(
            error.contains("rules.toml") && error.contains("nope"),
            "{error}"
        );
        assert_eq!(names(&shared), ["f2", "r1"]);
        // A file rule that clashes with a runtime one is refused.
        file.write("[[rule]]\nname = 'r1'\naction = { kind = 'drop' }\n");
        let error = shared.reload().expect_err("clash").to_string();
        assert!(error.contains("runtime"), "{error}");

        assert!(shared.remove("f2"));
        assert!(!shared.remove("f2"));
        assert_eq!(names(&shared), ["r1"]);
        file.write("[[rule]]\nname = 'f4'\naction = { kind = 'drop' }\n");
        assert_eq!(shared.reset().expect("resets"), 1);
        assert_eq!(names(&shared), ["f4"]);
    }

    #[test]
    fn without_a_file() {
        let shared = SharedRules::new(None).expect("nothing to load");
        assert!(shared.current().is_empty() && shared.path().is_none());
        shared.add(rule("a")).expect("added");
        assert_eq!(shared.reload().expect("reload"), 1);
        assert_eq!(shared.reset().expect("reset"), 0);
        assert!(SharedRules::default().current().is_empty());
        let invalid = Rule {
            action: crate::rules::Action::Throttle { bytes_per_sec: 0 },
            ..rule("bad")
        };
        assert!(matches!(
            shared.add(invalid),
            Err(RuleError::Invalid { .. })
        ));
        assert!(shared.current().is_empty());
        let missing = SharedRules::new(Some(PathBuf::from("/nonexistent/rules.toml")));
        assert!(matches!(missing, Err(RuleError::Io { .. })));
    }
}
