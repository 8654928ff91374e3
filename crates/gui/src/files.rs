//! Files: the editor's own open/save dialog (no GTK or portal needed, and testable like any
//! egui window), and the autosave of the open document.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use veetance_workflow::WorkflowFile;

/// Where autosaves go: `$XDG_STATE_HOME/veetance`, else `~/.local/state/veetance`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("veetance");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/veetance");
    }
    std::env::temp_dir().join("veetance")
}

/// Writes the open document to a recovery file every few seconds while it has unsaved changes,
/// so a crash loses at most those seconds. The file is removed when the document is saved.
pub struct Autosave {
    pub path: PathBuf,
    last_written: Option<WorkflowFile>,
    last_time: Option<Instant>,
}

const HEADER: &str = "// Veetance autosave of: ";

impl Autosave {
    pub fn new(path: PathBuf) -> Self {
        Autosave {
            path,
            last_written: None,
            last_time: None,
        }
    }

    /// Called every frame; writes when due and the document changed since the last write.
    pub fn tick(&mut self, doc: &WorkflowFile, dirty: bool, origin: &str, every: Duration) {
        if !dirty || self.last_written.as_ref() == Some(doc) {
            return;
        }
        if self.last_time.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_time = Some(Instant::now());
        if self.write(doc, origin).is_ok() {
            self.last_written = Some(doc.clone());
        }
    }

    /// Writes the recovery file now (atomically: a temporary file, then a rename).
    pub fn write(&self, doc: &WorkflowFile, origin: &str) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = format!("{HEADER}{origin}\n{}", doc.to_ron());
        veetance_workflow::write_atomic(&self.path, text.as_bytes())
    }

    /// Removes the recovery file (after a save, or when the user discards it).
    pub fn discard(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.last_written = None;
    }

    /// The autosaved document, if there is one worth offering: newer than the file that was
    /// opened (or nothing was opened) and different from what is open now.
    pub fn recoverable(
        &self,
        opened: Option<&Path>,
        current: &WorkflowFile,
    ) -> Option<WorkflowFile> {
        let saved_at = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()?;
        let opened_at = opened
            .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if saved_at <= opened_at {
            return None;
        }
        let text = std::fs::read_to_string(&self.path).ok()?;
        let file = WorkflowFile::parse(&text, &self.path.display().to_string()).ok()?;
        (file != *current && !file.nodes.is_empty()).then_some(file)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogMode {
    Open,
    SaveAs,
}

/// What the dialog decided.
#[derive(Clone, Debug, PartialEq)]
pub enum DialogOutcome {
    Chosen(PathBuf),
    Cancelled,
}

/// A small file dialog: a folder listing (folders, `.ron` files, and to open, `.png` and
/// ComfyUI's `.json` files), a name field, and Open/Save and Cancel.
pub struct FileDialog {
    pub mode: DialogMode,
    pub dir: PathBuf,
    pub name: String,
    dir_text: String,
    entries: Vec<(String, bool)>,
    pub error: Option<String>,
}

impl FileDialog {
    pub fn new(mode: DialogMode, dir: PathBuf, name: String) -> Self {
        let mut d = FileDialog {
            mode,
            dir_text: dir.display().to_string(),
            dir,
            name,
            entries: Vec::new(),
            error: None,
        };
        d.refresh();
        d
    }

    fn refresh(&mut self) {
        self.entries.clear();
        self.dir_text = self.dir.display().to_string();
        match std::fs::read_dir(&self.dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                    let wanted = is_dir
                        || name.ends_with(".ron")
                        || (self.mode == DialogMode::Open
                            && (name.ends_with(".png") || name.ends_with(".json")));
                    if wanted {
                        self.entries.push((name, is_dir));
                    }
                }
                self.entries
                    .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                self.error = None;
            }
            Err(e) => self.error = Some(format!("{}: {e}", self.dir.display())),
        }
    }

    fn chosen_path(&self) -> PathBuf {
        let name = Path::new(&self.name);
        if name.is_absolute() {
            name.to_path_buf()
        } else {
            self.dir.join(name)
        }
    }

    /// Shows the dialog; returns what was decided, if anything.
    pub fn show(&mut self, ctx: &egui::Context) -> Option<DialogOutcome> {
        let title = match self.mode {
            DialogMode::Open => "Open workflow",
            DialogMode::SaveAs => "Save workflow as",
        };
        let mut outcome = None;
        let mut navigate: Option<PathBuf> = None;
        egui::Window::new(title)
            .collapsible(false)
            .resizable(true)
            .default_size([520.0, 420.0])
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ctx, |ui| {
                ui.horizontal(|ui| {
                    if ui.button("Up").clicked() {
                        if let Some(parent) = self.dir.parent() {
                            navigate = Some(parent.to_path_buf());
                        }
                    }
                    let label = ui.label("Folder");
                    let r = ui
                        .add(egui::TextEdit::singleline(&mut self.dir_text).desired_width(380.0))
                        .labelled_by(label.id);
                    if r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                        navigate = Some(PathBuf::from(&self.dir_text));
                    }
                });
                ui.separator();
                egui::ScrollArea::vertical()
                    .max_height(260.0)
                    .show(ui, |ui| {
                        for (name, is_dir) in &self.entries {
                            let text = if *is_dir {
                                format!("📁 {name}")
                            } else {
                                name.clone()
                            };
                            let r = ui.selectable_label(*name == self.name, text);
                            if r.clicked() {
                                if *is_dir {
                                    navigate = Some(self.dir.join(name));
                                } else {
                                    self.name = name.clone();
                                }
                            }
                            if r.double_clicked() && !is_dir {
                                outcome = Some(DialogOutcome::Chosen(self.dir.join(name)));
                            }
                        }
                    });
                ui.separator();
                ui.horizontal(|ui| {
                    let label = ui.label("File name");
                    ui.add(egui::TextEdit::singleline(&mut self.name).desired_width(300.0))
                        .labelled_by(label.id);
                    let confirm = match self.mode {
                        DialogMode::Open => "Open",
                        DialogMode::SaveAs => "Save",
                    };
                    if ui
                        .add_enabled(!self.name.trim().is_empty(), egui::Button::new(confirm))
                        .clicked()
                    {
                        outcome = Some(DialogOutcome::Chosen(self.chosen_path()));
                    }
                    if ui.button("Cancel").clicked() {
                        outcome = Some(DialogOutcome::Cancelled);
                    }
                });
                if let Some(e) = &self.error {
                    ui.colored_label(egui::Color32::from_rgb(0xef, 0x53, 0x50), e);
                }
            });
        if let Some(dir) = navigate {
            self.dir = dir;
            self.refresh();
        }
        outcome
    }
}
