//! Settings from the config file, overridden by command-line flags.
//!
//! The file is TOML, found at `--config FILE`, else `$VEETANCE_CONFIG`, else `./veetance.toml`
//! when it exists:
//!
//! ```toml
//! [cache]
//! vram_budget = "16GiB"   # device memory in use (driver's count) the run keeps under
//! ram_budget = "50%"      # bytes cached values may hold in host memory (a size or a share)
//!
//! [paths]
//! models_dir = "models"   # ComfyUI layout: diffusion_models/, text_encoders/, vae/
//! out_dir = "out"
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub paths: PathsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub vram_budget: Option<String>,
    pub ram_budget: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsSection {
    pub models_dir: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
}

impl ConfigFile {
    /// Reads the config file named by `explicit`, or the default places. A file named
    /// explicitly must exist; the default `./veetance.toml` is optional.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<(Self, Option<PathBuf>)> {
        let env = std::env::var_os("VEETANCE_CONFIG").map(PathBuf::from);
        let (path, required) = match (explicit, env) {
            (Some(p), _) => (p.to_path_buf(), true),
            (None, Some(p)) => (p, true),
            (None, None) => (PathBuf::from("veetance.toml"), false),
        };
        if !required && !path.exists() {
            return Ok((ConfigFile::default(), None));
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read the config file", path.display()))?;
        let config: ConfigFile = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                path.display(),
                e.to_string().lines().collect::<Vec<_>>().join(" ")
            )
        })?;
        Ok((config, Some(path)))
    }
}

/// Parses a byte size: `1024`, `512MiB`, `16GiB`, `1.5GB`, `8g`. Binary units (KiB, MiB, GiB,
/// TiB, and the bare K/M/G/T) are powers of 1024; KB, MB, GB, TB are powers of 1000.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("{text:?} is not a size (try 16GiB, 512MiB or a byte count)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0f64.powi(2),
        "g" | "gib" => 1024.0f64.powi(3),
        "t" | "tib" => 1024.0f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => bail!(
            "{text:?}: unknown size unit {other:?} (use KiB, MiB, GiB or TiB, or a share like 80%)"
        ),
    };
    Ok((value * mult).round() as u64)
}

/// Parses a budget: a byte size (see [`parse_size`]) or a share of `total` such as `80%`.
/// `total` is the device's or the machine's memory, `None` when unknown.
pub fn parse_budget(text: &str, total: Option<u64>) -> anyhow::Result<u64> {
    let t = text.trim();
    let Some(share) = t.strip_suffix('%') else {
        return parse_size(t);
    };
    let percent: f64 = share
        .trim()
        .parse()
        .ok()
        .filter(|p: &f64| (0.0..=100.0).contains(p))
        .with_context(|| {
            format!("{text:?} is not a share (use 0% to 100%, or a size like 16GiB)")
        })?;
    let Some(total) = total else {
        bail!("{text:?}: a share needs the memory size, which is not known here; give a size such as 16GiB")
    };
    Ok((total as f64 * percent / 100.0).round() as u64)
}

/// Formats bytes for people: `1.50 GiB` (the core's formatter, shared with the memory events).
pub use veetance_core::memory::format_bytes as format_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("16GiB").unwrap(), 16 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("8g").unwrap(), 8 << 30);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn budgets_are_sizes_or_shares() {
        assert_eq!(parse_budget("8GiB", None).unwrap(), 8 << 30);
        assert_eq!(parse_budget("50%", Some(1000)).unwrap(), 500);
        assert_eq!(parse_budget(" 12.5 % ", Some(1000)).unwrap(), 125);
        assert!(parse_budget("50%", None).is_err());
        assert!(parse_budget("150%", Some(1000)).is_err());
        let err = parse_budget("16XB", Some(1000)).unwrap_err().to_string();
        assert!(
            err.contains("16XB") && err.contains("unknown size unit"),
            "{err}"
        );
    }

    #[test]
    fn sizes_format_for_people() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
    }
}
