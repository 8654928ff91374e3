//! Editor settings, persisted between sessions through eframe's storage. Every field has a
//! default (`#[serde(default)]`), so settings written by an older editor still load.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The key under which settings live in eframe's storage.
pub const STORAGE_KEY: &str = "veetance.settings";

/// How many recent files the File menu lists.
pub const RECENT_LIMIT: usize = 10;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The branded splash at start.
    pub show_splash: bool,
    /// The generation overlay (veil, quote, live preview) over the canvas during a run.
    pub show_overlay: bool,
    /// Most recent first.
    pub recent_files: Vec<PathBuf>,
    /// Where model files are listed from (ComfyUI layout: `diffusion_models/`, `vae/`, …).
    pub models_dir: PathBuf,
    /// Where output nodes write.
    pub out_dir: PathBuf,
    /// Seconds between autosaves of a changed document.
    pub autosave_seconds: u32,
    /// The node palette (left) is shown.
    pub show_palette: bool,
    /// The viewer (right) is shown.
    pub show_viewer: bool,
    /// When a workflow opens that does not fit the canvas at 100%, the palette and the viewer
    /// fold away so the graph reads at its normal size (they come back with their toggles).
    pub panels_give_way: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            show_splash: true,
            show_overlay: true,
            recent_files: Vec::new(),
            models_dir: PathBuf::from("models"),
            out_dir: PathBuf::from("out"),
            autosave_seconds: 5,
            show_palette: true,
            show_viewer: true,
            panels_give_way: true,
        }
    }
}

impl Settings {
    /// Puts `path` first in the recent files.
    pub fn push_recent(&mut self, path: &Path) {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        self.recent_files.retain(|p| p != &path);
        self.recent_files.insert(0, path);
        self.recent_files.truncate(RECENT_LIMIT);
    }

    /// Reads settings from their RON text; unknown or missing fields fall back to defaults.
    pub fn from_ron(text: &str) -> Self {
        ron::from_str(text).unwrap_or_default()
    }

    pub fn to_ron(&self) -> String {
        ron::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_tolerate_missing_fields() {
        let mut s = Settings {
            show_splash: false,
            ..Settings::default()
        };
        s.push_recent(Path::new("/nonexistent/a.ron"));
        assert_eq!(Settings::from_ron(&s.to_ron()), s);
        let partial = Settings::from_ron("(show_overlay: false)");
        assert!(!partial.show_overlay);
        assert!(partial.show_splash);
    }
}
