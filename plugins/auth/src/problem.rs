//! Config problems, each with its key path and, when known, its line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, Spanned};

/// One problem in the `auth:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path from the file's root, e.g. `auth.keys[2].sha256`.
    pub path: String,
    /// 1-based; 0 when the problem has no single place.
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.line, self.column)?;
        }
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects problems while the plugin is built.
pub(crate) struct Problems<'a> {
    pub base_dir: &'a Path,
    pub list: Vec<ConfigProblem>,
}

impl Problems<'_> {
    pub fn at(&mut self, at: Location, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigProblem {
            path: path.into(),
            line: at.line(),
            column: at.column(),
            message: message.into(),
        });
    }

    /// Reads a file named in the config: as written, else relative to the config's folder.
    pub fn read_file(&mut self, f: &Spanned<String>, path: &str) -> Option<Vec<u8>> {
        let given = PathBuf::from(&f.value);
        let candidates = [given.clone(), self.base_dir.join(&given)];
        match candidates.iter().find_map(|p| std::fs::read(p).ok()) {
            Some(bytes) => Some(bytes),
            None => {
                self.at(
                    f.referenced,
                    path,
                    format!("cannot read file `{}`", f.value),
                );
                None
            }
        }
    }
}
