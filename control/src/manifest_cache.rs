//! Reloading a manifest directory without parsing what did not change.
//!
//! YAML parsing is most of what a load costs (about 8 MB/s a core with
//! serde-saphyr: a 10,000-Service export of 44 MB is seconds), and a
//! reload is usually one file changed among many. So each file's parsed
//! objects are kept with a hash of its bytes (XXH3-128) and reused while
//! the bytes are the same; only the changed files are parsed, on as many
//! threads as there are cores. Every file is still read and hashed on each
//! load (tens of milliseconds for the largest clusters), so nothing depends
//! on timestamps or on which file events were seen.
//!
//! A load is all or nothing, as [`load_path`](crate::manifest::load_path):
//! on any error the cache is left as it was.

use crate::manifest::{Limits, LoadError, Manifests, load_str_with, manifest_files, read_listed};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_128;

/// Each file's objects, by path, with the hash of the bytes they came from.
#[derive(Debug, Clone, Default)]
pub struct ManifestCache {
    files: HashMap<PathBuf, (u128, Arc<Manifests>)>,
}

/// What one load found: one [`Manifests`] a file, in load order.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub files: Vec<Arc<Manifests>>,
    /// How many files were parsed (the others were unchanged).
    pub parsed: usize,
}

impl Loaded {
    pub fn services(
        &self,
    ) -> impl Iterator<Item = &crate::manifest::Sourced<k8s_openapi::api::core::v1::Service>> {
        self.files.iter().flat_map(|m| &m.services)
    }

    pub fn slices(
        &self,
    ) -> impl Iterator<Item = &crate::manifest::Sourced<k8s_openapi::api::discovery::v1::EndpointSlice>>
    {
        self.files.iter().flat_map(|m| &m.slices)
    }

    pub fn notes(&self) -> impl Iterator<Item = &String> {
        self.files.iter().flat_map(|m| &m.notes)
    }
}

impl ManifestCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads `path` as [`load_path_with`](crate::manifest::load_path_with)
    /// does (same files, order, limits and errors), parsing only the files
    /// whose bytes changed since the last successful load.
    pub fn load(&mut self, path: &Path, limits: &Limits) -> Result<Loaded, LoadError> {
        let mut total = 0u64;
        // (file, hash, its text when it must be parsed)
        let mut found: Vec<(PathBuf, u128, Option<String>)> = Vec::new();
        let listed = path.is_dir();
        for file in manifest_files(path)? {
            let Some(text) = read_listed(&file, listed, limits, &mut total)? else {
                continue;
            };
            let hash = xxh3_128(text.as_bytes());
            let known = self.files.get(&file).is_some_and(|(h, _)| *h == hash);
            found.push((file, hash, (!known).then_some(text)));
        }
        let todo: Vec<(usize, &Path, &str)> = found
            .iter()
            .enumerate()
            .filter_map(|(i, (f, _, t))| t.as_deref().map(|t| (i, f.as_path(), t)))
            .collect();
        let parsed = todo.len();
        let mut fresh = parse_all(&todo, limits)?;
        let mut files = HashMap::with_capacity(found.len());
        let mut out = Vec::with_capacity(found.len());
        for (i, (file, hash, _)) in found.into_iter().enumerate() {
            let manifests = match fresh.remove(&i) {
                Some(m) => Arc::new(m),
                None => Arc::clone(&self.files[&file].1),
            };
            out.push(Arc::clone(&manifests));
            files.insert(file, (hash, manifests));
        }
        self.files = files;
        Ok(Loaded { files: out, parsed })
    }
}

/// Parses `(index, file, text)`s on up to one thread a core; the error of
/// the first file in load order wins, as a sequential load would report.
fn parse_all(
    todo: &[(usize, &Path, &str)],
    limits: &Limits,
) -> Result<HashMap<usize, Manifests>, LoadError> {
    let one = |&(i, file, text): &(usize, &Path, &str)| {
        let mut m = load_str_with(text, Some(file), limits)?;
        m.files.push(file.to_owned());
        Ok((i, m))
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(todo.len());
    let results: Vec<Result<(usize, Manifests), LoadError>> = if threads <= 1 {
        todo.iter().map(one).collect()
    } else {
        // Interleaved: big and small files spread over the threads.
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        todo.iter()
                            .skip(t)
                            .step_by(threads)
                            .map(one)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    let mut first_error: Option<(usize, LoadError)> = None;
    let mut out = HashMap::with_capacity(results.len());
    for r in results {
        match r {
            Ok((i, m)) => {
                out.insert(i, m);
            }
            Err(e) => {
                let at = todo
                    .iter()
                    .position(|(_, f, _)| *f == e.file())
                    .unwrap_or(usize::MAX);
                if first_error.as_ref().is_none_or(|(j, _)| at < *j) {
                    first_error = Some((at, e));
                }
            }
        }
    }
    match first_error {
        Some((_, e)) => Err(e),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load_path;

    fn service(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
        )
    }

    #[test]
    fn only_changed_files_are_parsed_and_the_result_is_a_full_load() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            std::fs::write(
                dir.path().join(format!("{i}.yaml")),
                service(&format!("s{i}"), &format!("192.0.2.{}", i + 1)),
            )
            .unwrap();
        }
        let mut cache = ManifestCache::new();
        let first = cache.load(dir.path(), &Limits::DEFAULT).unwrap();
        assert_eq!(first.parsed, 5);
        let again = cache.load(dir.path(), &Limits::DEFAULT).unwrap();
        assert_eq!(again.parsed, 0);
        assert!(Arc::ptr_eq(&first.files[0], &again.files[0]));

        std::fs::write(dir.path().join("2.yaml"), service("changed", "192.0.2.99")).unwrap();
        std::fs::remove_file(dir.path().join("4.yaml")).unwrap();
        std::fs::write(dir.path().join("5.yaml"), service("new", "192.0.2.50")).unwrap();
        let changed = cache.load(dir.path(), &Limits::DEFAULT).unwrap();
        assert_eq!(changed.parsed, 2);
        let whole = load_path(dir.path()).unwrap();
        let names = |it: &mut dyn Iterator<Item = &crate::manifest::Sourced<_>>| {
            it.map(
                |s: &crate::manifest::Sourced<k8s_openapi::api::core::v1::Service>| {
                    (s.file.clone(), s.object.metadata.name.clone())
                },
            )
            .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&mut changed.services()),
            names(&mut whole.services.iter())
        );

        // A broken file fails the load and leaves the cache as it was.
        std::fs::write(dir.path().join("1.yaml"), "kind: [").unwrap();
        std::fs::write(dir.path().join("3.yaml"), "kind: [").unwrap();
        let err = cache.load(dir.path(), &Limits::DEFAULT).unwrap_err();
        assert_eq!(err.file(), dir.path().join("1.yaml"), "{err}");
        std::fs::write(dir.path().join("1.yaml"), service("s1", "192.0.2.2")).unwrap();
        std::fs::write(dir.path().join("3.yaml"), service("s3", "192.0.2.4")).unwrap();
        assert_eq!(cache.load(dir.path(), &Limits::DEFAULT).unwrap().parsed, 0);
    }
}
