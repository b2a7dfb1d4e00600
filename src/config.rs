//! Loading a configuration: YAML text → `file::FileConfig` (serde) → `model::Config`
//! (validated). Every error names the file, the field and, where it can be found, the line.

pub mod ext_authz;
pub mod file;
mod locate;
pub mod model;
pub mod telemetry;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::Config;

/// A configuration problem, precise enough to fix without reading the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted field path such as `routes[1].auth.issuer`.
    pub field: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The text of a config file, kept so that later errors (policy compilation, say) can point
/// at the line of the field that caused them.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            field: None,
            line: None,
            column: None,
            message: format!("cannot read config file: {e}"),
        })?;
        Ok(Source {
            file: path.to_path_buf(),
            text,
        })
    }

    /// An error about `field` (e.g. `routes[0].policy`), located in the text when possible.
    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            field: Some(field.to_string()),
            line: locate::line_of(&self.text, field),
            column: None,
            message: message.into(),
        }
    }

    /// Directory that relative paths in the file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn parse(&self) -> Result<Config, ConfigError> {
        let raw: file::FileConfig = yaml_serde::from_str(&self.text).map_err(|e| {
            let loc = e.location();
            let mut message = e.to_string();
            // The library appends " at line L column C"; we print the location up front.
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            ConfigError {
                file: self.file.clone(),
                field: None,
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                message,
            }
        })?;
        validate::validate(self, raw)
    }
}

/// Read, parse and validate a config file (policies are compiled separately, see
/// `crate::gateway`).
pub fn load(path: &Path) -> Result<(Source, Config), ConfigError> {
    let source = Source::read(path)?;
    let config = source.parse()?;
    Ok((source, config))
}
