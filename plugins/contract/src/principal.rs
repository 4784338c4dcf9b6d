//! Who is calling, as the identify phase found out.

use globset::{Glob, GlobSet, GlobSetBuilder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A gateway API key from the config.
    ApiKey,
    /// A JWT from a trusted issuer.
    Jwt,
    /// Nobody: the gateway runs without authentication.
    Anonymous,
}

/// The caller: what limits, budgets and logs key on.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The key's configured id, or the JWT subject. Never the secret.
    pub id: String,
    pub team: Option<String>,
    pub tier: Option<String>,
    /// Which public models it may use.
    pub models: ModelFilter,
}

impl Principal {
    /// The caller when no authentication is configured: anything goes.
    pub fn anonymous() -> Self {
        Principal {
            kind: PrincipalKind::Anonymous,
            id: "anonymous".to_owned(),
            team: None,
            tier: None,
            models: ModelFilter::any(),
        }
    }
}

/// Allowed model names as glob patterns (`gpt-4o*`, `llama-*`); none given means all.
#[derive(Debug, Clone)]
pub struct ModelFilter {
    patterns: Vec<String>,
    set: Option<GlobSet>,
}

impl ModelFilter {
    pub fn any() -> Self {
        ModelFilter {
            patterns: Vec::new(),
            set: None,
        }
    }

    /// From patterns; an empty list allows every model. Fails on a malformed pattern.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        if patterns.is_empty() {
            return Ok(Self::any());
        }
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            let glob = Glob::new(p.as_ref()).map_err(|e| format!("`{}`: {e}", p.as_ref()))?;
            builder.add(glob);
        }
        Ok(ModelFilter {
            patterns: patterns.iter().map(|p| p.as_ref().to_owned()).collect(),
            set: Some(builder.build().map_err(|e| e.to_string())?),
        })
    }

    pub fn allows(&self, model: &str) -> bool {
        self.set.as_ref().is_none_or(|s| s.is_match(model))
    }

    /// The patterns as given (empty: all models).
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_model_names() {
        let f = ModelFilter::new(&["gpt-4o*", "llama-3.1-8b"]).unwrap();
        assert!(f.allows("gpt-4o"));
        assert!(f.allows("gpt-4o-mini"));
        assert!(f.allows("llama-3.1-8b"));
        assert!(!f.allows("llama-3.1-70b"));
        assert!(!f.allows("o1"));
        assert!(ModelFilter::new::<&str>(&[]).unwrap().allows("anything"));
        assert!(ModelFilter::new(&["[oops"]).is_err());
    }
}
