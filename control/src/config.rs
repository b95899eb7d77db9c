//! The manifest-directory source: loads Kubernetes objects from a file or
//! directory, translates them (the same translation the Kubernetes watcher
//! uses) and watches for changes. A load is all or nothing: a syntax error
//! or any invalid object refuses the whole load, naming file, object and
//! field, so the caller can exit at start-up or keep the previous
//! configuration on a reload.

use crate::ids::IdAllocator;
use crate::manifest::{Limits, LoadError};
use crate::manifest_cache::ManifestCache;
use crate::translate::{AffinityDefaults, ObjectError, SpecInfo, TranslateContext, translate};
use crossbeam_channel::{Receiver, unbounded};
use limpet_dataplane::snapshot::{ForwardMode, ServicePortSpec};
use notify::{RecursiveMode, Watcher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{}", invalid_message(.0))]
    Invalid(Vec<ObjectError>),
    #[error("watching {path}: {message}")]
    Watch { path: PathBuf, message: String },
}

fn invalid_message(errors: &[ObjectError]) -> String {
    let mut out = format!("{} invalid object(s):", errors.len());
    for e in errors {
        out.push_str("\n  ");
        out.push_str(&e.to_string());
    }
    out
}

/// Where service state comes from, with what it needs to stay consistent
/// across reloads (stable ids, so affinity survives a reload).
#[derive(Debug, Clone)]
pub struct ConfigSource {
    path: PathBuf,
    ctx: TranslateContext,
    ids: IdAllocator,
    /// What the last load parsed, reused for unchanged files.
    cache: ManifestCache,
}

impl ConfigSource {
    pub fn new(
        path: PathBuf,
        mode: ForwardMode,
        node_name: String,
        node_addresses: Vec<IpAddr>,
    ) -> Self {
        Self {
            path,
            ctx: TranslateContext {
                node_name: Some(node_name),
                node_addresses,
                mode,
                ..TranslateContext::default()
            },
            ids: IdAllocator::new(),
            cache: ManifestCache::new(),
        }
    }

    /// Hands out ids from `ids` (an earlier process's, see
    /// [`IdAllocator::seeded`]) instead of from scratch.
    #[must_use]
    pub fn with_ids(mut self, ids: IdAllocator) -> Self {
        self.ids = ids;
        self
    }

    /// Sets [`TranslateContext::maglev_min_size`].
    #[must_use]
    pub fn with_maglev_min_size(mut self, size: usize) -> Self {
        self.ctx.maglev_min_size = size;
        self
    }

    /// Sets [`TranslateContext::affinity`].
    #[must_use]
    pub fn with_affinity_defaults(mut self, defaults: AffinityDefaults) -> Self {
        self.ctx.affinity = defaults;
        self
    }

    /// Sets [`TranslateContext::node_zone`].
    #[must_use]
    pub fn with_node_zone(mut self, zone: Option<String>) -> Self {
        self.ctx.node_zone = zone;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads and translates the whole configuration.
    pub fn load(&mut self) -> Result<Vec<ServicePortSpec>, ConfigError> {
        self.load_with_info().map(|(specs, _)| specs)
    }

    /// [`load`](Self::load), with what each spec was made from
    /// (`info[i]` describes `specs[i]`).
    pub fn load_with_info(&mut self) -> Result<(Vec<ServicePortSpec>, Vec<SpecInfo>), ConfigError> {
        let loaded = self.cache.load(&self.path, &Limits::DEFAULT)?;
        for note in loaded.notes() {
            tracing::info!("{note}");
        }
        let translation = translate(loaded.services(), loaded.slices(), &self.ctx, &mut self.ids);
        for (name, reason) in &translation.skipped {
            tracing::debug!("skipped {name}: {reason}");
        }
        if !translation.errors.is_empty() {
            return Err(ConfigError::Invalid(translation.errors));
        }
        Ok((translation.specs, translation.info))
    }

    /// Starts watching the configuration; each change sends a message. The
    /// returned watcher must be kept alive.
    pub fn watch(&self) -> Result<(notify::RecommendedWatcher, Receiver<()>), ConfigError> {
        let (tx, rx) = unbounded();
        let watch_err = |e: notify::Error| ConfigError::Watch {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })
            .map_err(watch_err)?;
        // Editors replace files by renaming over them: watch the directory
        // a file lives in, not the file's inode.
        let dir = if self.path.is_dir() {
            self.path.clone()
        } else {
            self.path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        };
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_err)?;
        Ok((watcher, rx))
    }
}
