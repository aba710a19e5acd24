//! Configuration file: TOML, unknown fields refused, errors with file and line.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use sipward_proto::Limits;

/// The whole configuration. The gateway issue grows it (zones, objects, ALGs, services,
/// rules); for now it carries the wire-layer limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    pub(crate) limits: LimitsConfig,
}

/// Wire-layer limits; every field optional, defaulting to the founding brief's values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsConfig {
    max_param_len: Option<usize>,
    max_message_len: Option<usize>,
    max_sdp_len: Option<usize>,
    max_headers: Option<usize>,
    max_vias: Option<usize>,
    max_routes: Option<usize>,
    max_contacts: Option<usize>,
    max_params: Option<usize>,
    max_sdp_media: Option<usize>,
    max_sdp_lines: Option<usize>,
}

impl LimitsConfig {
    pub(crate) fn to_limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            max_param_len: self.max_param_len.unwrap_or(d.max_param_len),
            max_message_len: self.max_message_len.unwrap_or(d.max_message_len),
            max_sdp_len: self.max_sdp_len.unwrap_or(d.max_sdp_len),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
            max_vias: self.max_vias.unwrap_or(d.max_vias),
            max_routes: self.max_routes.unwrap_or(d.max_routes),
            max_contacts: self.max_contacts.unwrap_or(d.max_contacts),
            max_params: self.max_params.unwrap_or(d.max_params),
            max_sdp_media: self.max_sdp_media.unwrap_or(d.max_sdp_media),
            max_sdp_lines: self.max_sdp_lines.unwrap_or(d.max_sdp_lines),
        }
    }
}

impl Config {
    /// Reads and checks a configuration file. Errors name the file and line.
    pub(crate) fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub(crate) fn parse(text: &str, origin: &str) -> Result<Config> {
        toml::from_str::<Config>(text).map_err(|e| {
            let line = e.span().map(|s| {
                text.get(..s.start)
                    .map_or(1, |t| t.matches('\n').count() + 1)
            });
            match line {
                Some(line) => anyhow!("{origin}:{line}: {}", e.message()),
                None => anyhow!("{origin}: {}", e.message()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_to_the_brief() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.limits.to_limits(), Limits::default());
        let c = Config::parse("[limits]\nmax_param_len = 10\n", "t").unwrap();
        assert_eq!(c.limits.to_limits().max_param_len, 10);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e =
            Config::parse("[limits]\nmax_param_len = 10\nmax_bogus = 3\n", "x.toml").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("x.toml:3: "), "{text}");
        assert!(text.contains("max_bogus"), "{text}");
        let e = Config::parse("[limits]\nmax_param_len = \"ten\"\n", "x.toml").unwrap_err();
        assert!(e.to_string().starts_with("x.toml:2: "), "{e}");
    }
}
