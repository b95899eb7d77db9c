//! The Kubernetes API source: watches `Service`s and `EndpointSlice`s in
//! every namespace (kube-rs `watcher` + `reflector`) and hands the control
//! loop a full [`Translation`] once, then [`TranslationDelta`]s.
//!
//! # What it does, as kube-proxy does
//!
//! - Both resources are listed and watched with kube-proxy's label selector
//!   ([`LABEL_SELECTOR`]): objects of another proxy and headless services'
//!   slices never reach limpet.
//! - Nothing is published until **both** initial lists are complete
//!   ([`KubeUpdate::Synced`]); a half-listed cluster would otherwise look
//!   like services with no endpoints, and their traffic would be dropped.
//! - Afterwards every add, update or delete leads to a
//!   [`KubeUpdate::Changed`] carrying only the service ports it changed
//!   ([`TranslationDelta`]), so a change costs the same whatever the size
//!   of the cluster. Coalescing is leading-edge: a change is sent at once,
//!   with whatever arrived with it; while the consumer has not taken the
//!   last update (it is building and publishing a snapshot), further
//!   changes are gathered into the next one. A change that leaves every
//!   translation as it was sends nothing.
//! - Errors (API server unreachable, a watch dropped, `410 Gone`) are
//!   retried with exponential backoff ([`BackoffOptions`], client-go's
//!   parameters by default), capped, so the first try after the server
//!   returns is at most [`BackoffOptions::max`] away however long it was
//!   gone. The stores keep the last known objects meanwhile, so an outage
//!   never produces an empty state; a relist (after `410 Gone`) replaces a
//!   store atomically once it completes. Watch bookmarks are requested.
//! - `410 Gone` has its own backoff, apart from that of other errors: one
//!   `410` (history compacted while the watch was away) costs one relist,
//!   after [`BackoffOptions::initial`] even if an outage had already
//!   pushed the other backoff to its cap; a storm of them (a server that
//!   answers every watch with `410`) makes the relists ever rarer, up to
//!   one per [`BackoffOptions::max`], instead of one full list of the
//!   cluster per `410`. kube-rs's own stream backoff resets on every event
//!   a relist produces, which is exactly what a storm feeds it.
//! - [`KubeSource::ready`] says whether the state is current: the API
//!   server answers, the first state was sent and no relist is pending
//!   after a `410`. While it is not, the last state keeps being served.
//! - This node's identity comes from its `Node` object when
//!   [`TranslateContext::node_name`] is set and the addresses or the zone
//!   are not given: its `InternalIP` and `ExternalIP` addresses are where
//!   node ports are served, its `topology.kubernetes.io/zone` label the zone
//!   for topology hints. The node is read (`get`, the only right on nodes
//!   limpet asks for) before the first state and every
//!   [`KubeOptions::node_refresh`] after; a change re-translates every
//!   service. A node that does not exist leaves both empty.
//! - Invalid objects are reported in [`Translation::errors`] and the rest
//!   is translated: unlike a manifest directory, the cluster state cannot be
//!   refused wholesale.
//!
//! The source runs on its own thread with a single-threaded tokio runtime;
//! one [`IdAllocator`] lives there for the life of the source, so ids are
//! stable across updates. Dropping the [`KubeSource`] stops the thread.

use crate::ids::IdAllocator;
use crate::translate::{
    Assembly, ServiceTranslation, SliceReport, TranslateContext, Translation, TranslationDelta,
    slice_report, slice_service, translate_service,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{debug, info, warn};

/// kube-proxy's selector for both resources: not another proxy's, not a
/// headless service's.
pub const LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Retry timing after an error (list or watch failed, watch dropped,
/// `410 Gone`). The delay starts at `initial`, is multiplied by `factor`
/// after every consecutive error up to `max`, and, with `jitter`, a random
/// part of up to the same amount is added (never beyond `max`). Errors
/// other than `410` start again from `initial` once the server answers
/// (a list page or a watch event); `410`s start again once `reset_after`
/// has passed since the last delay (a relist's own answers do not count:
/// a storm of `410`s would otherwise relist at `initial` for ever).
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffOptions {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
    pub jitter: bool,
    pub reset_after: Duration,
}

impl Default for BackoffOptions {
    /// client-go's reflector: 800 ms doubling to 30 s, jittered, reset after
    /// two quiet minutes.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(800),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: true,
            reset_after: Duration::from_mins(2),
        }
    }
}

/// How to reach the API server and what to translate for.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// A kubeconfig file (its current context); `None` for the in-cluster
    /// configuration (service account token, `KUBERNETES_SERVICE_HOST`).
    pub kubeconfig: Option<PathBuf>,
    pub ctx: TranslateContext,
    pub backoff: BackoffOptions,
    /// How often the `Node` is read again (see the module documentation).
    pub node_refresh: Duration,
}

impl KubeOptions {
    /// Defaults for everything but where the API server is.
    pub fn new(kubeconfig: Option<PathBuf>, ctx: TranslateContext) -> Self {
        Self {
            kubeconfig,
            ctx,
            backoff: BackoffOptions::default(),
            node_refresh: Duration::from_mins(1),
        }
    }
}

/// What the source sends: the cluster's state once, then its changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeUpdate {
    /// The first state, once both initial lists have completed.
    Synced(Translation),
    /// What changed since the previous update (never nothing); apply it to
    /// the state so far ([`Translation::apply`]).
    Changed(TranslationDelta),
}

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("starting the Kubernetes source: {0}")]
    Io(#[from] std::io::Error),
}

/// What the source thread reports besides updates.
#[derive(Debug, Default)]
struct Status {
    connected: AtomicBool,
    synced: AtomicBool,
    /// A relist is pending after `410 Gone` (the stores are behind).
    relisting: AtomicBool,
    /// Per watched resource ([`Watched`]): its latest request succeeded
    /// and its stream has not failed since. One resource's watcher can sit
    /// in backoff long after the other's reconnected (each backs off on its
    /// own), so the global `connected` alone would call a stale store
    /// current.
    watching: [AtomicBool; 2],
    last_error: Mutex<Option<String>>,
}

/// The resources whose stores make the state, indexing [`Status::watching`].
#[derive(Debug, Clone, Copy)]
enum Watched {
    Services = 0,
    EndpointSlices = 1,
}

impl Watched {
    /// The resource a request is for, from its path (`/api/v1/services`,
    /// `/apis/discovery.k8s.io/v1/endpointslices`, namespaced or not).
    fn of_path(path: &str) -> Option<Self> {
        match path.rsplit('/').next()? {
            "services" => Some(Self::Services),
            "endpointslices" => Some(Self::EndpointSlices),
            _ => None,
        }
    }
}

impl Status {
    fn watching(&self, w: Watched) -> bool {
        self.watching[w as usize].load(Ordering::Relaxed)
    }

    fn set_watching(&self, w: Watched, up: bool) {
        self.watching[w as usize].store(up, Ordering::Relaxed);
    }

    fn set_error(&self, e: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
    }
}

/// A running Kubernetes source; see the module documentation.
pub struct KubeSource {
    /// Full states, in order. The source thread stops when the
    /// `KubeSource` is dropped, or at its next update once every receiver
    /// is gone.
    pub updates: crossbeam_channel::Receiver<KubeUpdate>,
    status: Arc<Status>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl KubeSource {
    /// Loads the client configuration and starts watching. Fails only on a
    /// configuration that cannot be used (no file, no such context, not in
    /// a cluster); an unreachable API server is retried for ever. Call it
    /// from outside any tokio runtime (it runs its own).
    pub fn spawn(opts: KubeOptions) -> Result<Self, KubeError> {
        Self::spawn_with_ids(opts, IdAllocator::new())
    }

    /// [`spawn`](Self::spawn), handing out ids from `ids` (an earlier
    /// process's, see [`IdAllocator::seeded`]).
    pub fn spawn_with_ids(opts: KubeOptions, ids: IdAllocator) -> Result<Self, KubeError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let status = Arc::new(Status::default());
        let client = rt.block_on(client(opts.kubeconfig.as_ref(), &status))?;
        let (tx, updates) = crossbeam_channel::unbounded();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread_status = status.clone();
        let thread = std::thread::Builder::new()
            .name("limpet-kube".to_owned())
            .spawn(move || {
                rt.block_on(run(client, opts, ids, thread_status, tx, stopped));
            })?;
        Ok(Self {
            updates,
            status,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Whether the API server answered the latest request (any HTTP status
    /// but 502, 503 and 504).
    pub fn connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    /// Whether both initial lists have completed and
    /// [`KubeUpdate::Synced`] was sent.
    pub fn synced(&self) -> bool {
        self.status.synced.load(Ordering::Relaxed)
    }

    /// Whether the state sent so far is current: [`connected`](Self::connected),
    /// [`synced`](Self::synced), both watches re-established since their
    /// last failure, and no relist pending after `410 Gone` (through a `410`
    /// storm it is mostly not).
    pub fn ready(&self) -> bool {
        self.connected()
            && self.synced()
            && self.status.watching(Watched::Services)
            && self.status.watching(Watched::EndpointSlices)
            && !self.status.relisting.load(Ordering::Relaxed)
    }

    /// The most recent list or watch error, if any (kept after recovery;
    /// see [`connected`](Self::connected) for the current state).
    pub fn last_error(&self) -> Option<String> {
        self.status
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn client(
    kubeconfig: Option<&PathBuf>,
    status: &Arc<Status>,
) -> Result<kube::Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::incluster()?,
    };
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(builder.with_layer(&ObserveLayer(status.clone())).build())
}

/// Records, for every request the client makes, whether the API server
/// answered ([`KubeSource::connected`]).
struct ObserveLayer(Arc<Status>);

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            status: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Observe<S> {
    inner: S,
    status: Arc<Status>,
}

impl<S, ReqB, B> tower::Service<http::Request<ReqB>> for Observe<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let watched = Watched::of_path(req.uri().path());
        let fut = self.inner.call(req);
        let status = self.status.clone();
        Box::pin(async move {
            let res = fut.await;
            if let Some(w) = watched {
                // A failed stream clears it again ([`Progress::signal`]).
                let ok = matches!(&res, Ok(resp) if resp.status().is_success());
                status.set_watching(w, ok);
            }
            let up = match &res {
                Ok(resp) => !matches!(resp.status().as_u16(), 502..=504),
                Err(e) => {
                    status.set_error(format!("API server unreachable: {e}"));
                    false
                }
            };
            if status.connected.swap(up, Ordering::Relaxed) != up {
                if up {
                    info!("Kubernetes API server reachable");
                } else {
                    warn!("Kubernetes API server unreachable");
                }
            }
            res
        })
    }
}

/// Exponential backoff with optional jitter (see [`BackoffOptions`]).
struct Exponential {
    opts: BackoffOptions,
    current: Duration,
    random: RandomState,
    draws: u64,
}

impl Exponential {
    fn new(opts: BackoffOptions) -> Self {
        Self {
            current: opts.initial,
            opts,
            random: RandomState::new(),
            draws: 0,
        }
    }
}

impl Iterator for Exponential {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.current.min(self.opts.max);
        self.current = base.mul_f64(self.opts.factor.max(1.0)).min(self.opts.max);
        let delay = if self.opts.jitter {
            self.draws += 1;
            let r = self.random.hash_one(self.draws) as f64 / u64::MAX as f64;
            base + base.mul_f64(r)
        } else {
            base
        };
        Some(delay.min(self.opts.max))
    }
}

impl Backoff for Exponential {
    fn reset(&mut self) {
        self.current = self.opts.initial;
    }
}

fn backoff(opts: &BackoffOptions) -> ResetTimerBackoff<Exponential> {
    ResetTimerBackoff::new(Exponential::new(opts.clone()), opts.reset_after)
}

/// The delays of one resource's watcher: one backoff for `410 Gone`, one
/// for every other error (see [`BackoffOptions`]).
struct Retry {
    failing: ResetTimerBackoff<Exponential>,
    gone: ResetTimerBackoff<Exponential>,
}

impl Retry {
    fn new(opts: &BackoffOptions) -> Self {
        Self {
            failing: backoff(opts),
            gone: backoff(opts),
        }
    }

    /// How long to wait before asking the watcher for more, after `item`.
    fn after<K>(&mut self, item: &Result<watcher::Event<K>, watcher::Error>) -> Option<Duration> {
        match item {
            // Sent before any request is made.
            Ok(watcher::Event::Init) => None,
            Ok(_) => {
                self.failing.reset();
                None
            }
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                // The server answered; what it said was "relist".
                self.failing.reset();
                self.gone.next()
            }
            Err(_) => self.failing.next(),
        }
    }
}

/// `stream` (a watcher's), paused after each error as [`Retry`] says.
fn with_retry<K: Send + 'static>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    opts: &BackoffOptions,
) -> futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>> {
    futures::stream::unfold(
        (stream.boxed(), Retry::new(opts), None),
        |(mut stream, mut retry, pause)| async move {
            if let Some(d) = pause {
                tokio::time::sleep(d).await;
            }
            let item = stream.next().await?;
            let pause = retry.after(&item);
            Some((item, (stream, retry, pause)))
        },
    )
    .boxed()
}

/// What a watcher event means here (the stores hold the objects).
enum Signal<K: Lookup> {
    /// A relist started or listed an object: the store is unchanged until
    /// it completes.
    Listing,
    /// A list completed (the store was replaced).
    Listed,
    /// This object was added, changed or deleted.
    Changed(ObjectRef<K>),
    Error {
        message: String,
        gone: bool,
    },
}

impl<K> Signal<K>
where
    K: Lookup,
    K::DynamicType: Default,
{
    fn of(ev: Result<watcher::Event<K>, watcher::Error>) -> Self {
        match ev {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Signal::Listing,
            Ok(watcher::Event::InitDone) => Signal::Listed,
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                Signal::Changed(ObjectRef::from_obj(&o))
            }
            Err(e) => Signal::Error {
                gone: matches!(&e, watcher::Error::WatchError(s) if s.code == 410),
                message: e.to_string(),
            },
        }
    }
}

/// Per resource: whether its initial list has completed, and what changed
/// since the last translation.
struct Progress<K: Lookup> {
    what: &'static str,
    resource: Watched,
    synced: bool,
    /// A list completed: the whole store may have changed.
    relisted: bool,
    /// `410 Gone` was answered and the relist has not completed.
    gone: bool,
    dirty: Vec<ObjectRef<K>>,
}

impl<K: Lookup> Progress<K> {
    fn new(what: &'static str, resource: Watched) -> Self {
        Self {
            what,
            resource,
            synced: false,
            relisted: false,
            gone: false,
            dirty: Vec::new(),
        }
    }

    /// Whether the store changed; logs errors.
    fn signal(&mut self, signal: Signal<K>, status: &Status) -> bool {
        let what = self.what;
        match signal {
            Signal::Listing => false,
            Signal::Listed => {
                if !self.synced {
                    info!("{what}: initial list complete");
                }
                self.synced = true;
                self.relisted = true;
                self.gone = false;
                self.dirty.clear();
                true
            }
            Signal::Changed(r) => {
                if !self.relisted {
                    self.dirty.push(r);
                }
                true
            }
            Signal::Error { message, gone } => {
                if gone {
                    debug!("{what}: resource version too old, relisting");
                    self.gone = true;
                } else {
                    warn!("{what}: {message}");
                }
                status.set_error(format!("{what}: {message}"));
                status.set_watching(self.resource, false);
                false
            }
        }
    }
}

/// (namespace, name) of an object, as translation names it.
type Key = (String, String);

fn key_of(namespace: Option<&str>, name: &str) -> Key {
    (
        namespace
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_owned(),
        name.to_owned(),
    )
}

fn meta_key(meta: &kube::api::ObjectMeta) -> Key {
    key_of(
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// The cluster translated service by service: a change re-translates only
/// the services whose `Service` or slices changed, and the [`Assembly`]
/// says which service ports that changed. Objects are the stores' own,
/// shared, never copied.
#[derive(Default)]
struct Incremental {
    /// Every slice, with the service it is labelled for.
    slices: HashMap<Key, Option<Key>>,
    /// Slices' own errors and skip reasons (non-empty ones only).
    reports: BTreeMap<Key, SliceReport>,
    /// Each service's slices, by slice name.
    members: HashMap<Key, BTreeMap<String, Arc<EndpointSlice>>>,
    /// Each service's translation, put together.
    assembly: Assembly,
}

impl Incremental {
    fn leave(&mut self, slice: &Key, service: Key, dirty: &mut BTreeSet<Key>) {
        if let Some(m) = self.members.get_mut(&service) {
            m.remove(&slice.1);
            if m.is_empty() {
                self.members.remove(&service);
            }
        }
        dirty.insert(service);
    }

    /// Records a slice's latest state (`None`: deleted); the services it
    /// left or is in are added to `dirty`. Whether its report changed.
    fn slice(
        &mut self,
        key: Key,
        obj: Option<Arc<EndpointSlice>>,
        dirty: &mut BTreeSet<Key>,
    ) -> bool {
        let Some(obj) = obj else {
            if let Some(Some(old)) = self.slices.remove(&key) {
                self.leave(&key, old, dirty);
            }
            return self.reports.remove(&key).is_some();
        };
        let service = slice_service(&obj).map(|s| (key.0.clone(), s.to_owned()));
        if let Some(Some(old)) = self.slices.insert(key.clone(), service.clone())
            && service.as_ref() != Some(&old)
        {
            self.leave(&key, old, dirty);
        }
        let report = slice_report(&obj);
        if let Some(s) = service {
            self.members
                .entry(s.clone())
                .or_default()
                .insert(key.1.clone(), obj);
            dirty.insert(s);
        }
        if report == SliceReport::default() {
            self.reports.remove(&key).is_some()
        } else {
            self.reports.insert(key, report.clone()).as_ref() != Some(&report)
        }
    }

    /// Translates one service (`None`: deleted) with its slices.
    fn translate(
        &self,
        obj: Option<&Service>,
        key: &Key,
        ctx: &TranslateContext,
        ids: &mut IdAllocator,
    ) -> Option<ServiceTranslation> {
        let obj = obj?;
        let slices: Vec<&EndpointSlice> = self
            .members
            .get(key)
            .map(|m| m.values().map(AsRef::as_ref).collect())
            .unwrap_or_default();
        Some(translate_service(obj, &slices, ctx, ids))
    }

    /// Everything again from the stores' contents (a relist): the slices
    /// are re-read, every service re-translated, and the delta covers the
    /// services whose translation differs. `None`: nothing changed.
    fn rebuild(
        &mut self,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        ctx: &TranslateContext,
        ids: &mut IdAllocator,
    ) -> Option<TranslationDelta> {
        let old_reports = std::mem::take(&mut self.reports);
        self.slices.clear();
        self.members.clear();
        let mut ignored = BTreeSet::new();
        for s in slices.state() {
            self.slice(meta_key(&s.metadata), Some(s), &mut ignored);
        }
        let mut all: Vec<(Key, Arc<Service>)> = services
            .state()
            .into_iter()
            .map(|s| (meta_key(&s.metadata), s))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let listed: HashSet<&Key> = all.iter().map(|(k, _)| k).collect();
        let gone: Vec<Key> = self
            .assembly
            .parts()
            .map(|(k, _)| k)
            .filter(|k| !listed.contains(k))
            .cloned()
            .collect();
        let mut parts = Vec::with_capacity(all.len() + gone.len());
        for (key, svc) in &all {
            let part = self.translate(Some(svc), key, ctx, ids);
            parts.push((key.clone(), part));
        }
        parts.extend(gone.into_iter().map(|k| (k, None)));
        let delta = self.assembly.update(parts);
        if delta.is_none() && old_reports == self.reports {
            return None;
        }
        Some(self.finish(delta.unwrap_or_default()))
    }

    /// Applies the objects changed since the last update. `None`: nothing
    /// changed.
    fn apply(
        &mut self,
        changed_services: Vec<ObjectRef<Service>>,
        changed_slices: Vec<ObjectRef<EndpointSlice>>,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        ctx: &TranslateContext,
        ids: &mut IdAllocator,
    ) -> Option<TranslationDelta> {
        let mut reports_changed = false;
        let mut dirty: BTreeSet<Key> = BTreeSet::new();
        for r in changed_slices {
            let key = key_of(r.namespace.as_deref(), &r.name);
            reports_changed |= self.slice(key, slices.get(&r), &mut dirty);
        }
        let mut found: HashMap<Key, Option<Arc<Service>>> = HashMap::new();
        for r in changed_services {
            let key = key_of(r.namespace.as_deref(), &r.name);
            found.insert(key.clone(), services.get(&r));
            dirty.insert(key);
        }
        let mut parts = Vec::with_capacity(dirty.len());
        for key in dirty {
            let obj = match found.remove(&key) {
                Some(o) => o,
                None => services.get(&ObjectRef::new(&key.1).within(&key.0)),
            };
            let part = self.translate(obj.as_deref(), &key, ctx, ids);
            parts.push((key, part));
        }
        let delta = self.assembly.update(parts);
        if delta.is_none() && !reports_changed {
            return None;
        }
        Some(self.finish(delta.unwrap_or_default()))
    }

    fn finish(&self, mut delta: TranslationDelta) -> TranslationDelta {
        self.assembly.finish(&mut delta, self.reports.values());
        delta
    }
}

async fn run(
    client: kube::Client,
    opts: KubeOptions,
    mut ids: IdAllocator,
    status: Arc<Status>,
    tx: crossbeam_channel::Sender<KubeUpdate>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (services, slices, mut events) = watch(&client, &opts);
    let mut ctx = opts.ctx.clone();
    let node_wanted = NodeWanted::of(&ctx);
    let mut node_known = node_wanted.is_none();
    let mut nodes = match (&node_wanted, &ctx.node_name) {
        (Some(_), Some(name)) => node_stream(client.clone(), name.clone(), &opts),
        _ => futures::stream::pending().boxed(),
    };

    let mut svc_progress = Progress::<Service>::new("services", Watched::Services);
    let mut slice_progress =
        Progress::<EndpointSlice>::new("endpointslices", Watched::EndpointSlices);
    let mut state: Option<Incremental> = None;
    // Stores changed since the last update sent.
    let mut dirty = false;
    // The last update is still queued: look again then.
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        let wait = async {
            match retry {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            item = events.next() => {
                let Some(item) = item else { return };
                dirty |= take(item, &mut svc_progress, &mut slice_progress, &status);
                // Whatever else has already arrived goes into the same update.
                while let Some(Some(item)) = events.next().now_or_never() {
                    dirty |= take(item, &mut svc_progress, &mut slice_progress, &status);
                }
                status
                    .relisting
                    .store(svc_progress.gone || slice_progress.gone, Ordering::Relaxed);
            }
            () = wait => retry = None,
            Some(node) = nodes.next() => {
                // The first answer may be what lets the first state go.
                dirty |= !node_known;
                node_known = true;
                if let Some(wanted) = &node_wanted
                    && wanted.apply(node.as_ref(), &mut ctx)
                {
                    info!(
                        addresses = ?ctx.node_addresses,
                        zone = ?ctx.node_zone,
                        "this node's identity, from its Node object"
                    );
                    // Every service is translated again with it.
                    svc_progress.relisted = true;
                    dirty = true;
                }
            }
        }
        if !dirty || retry.is_some() {
            continue;
        }
        if !tx.is_empty() {
            // The consumer is still busy with the last update: what
            // arrives meanwhile is coalesced into the next one.
            retry = Some(tokio::time::Instant::now() + RETRY);
            continue;
        }
        dirty = false;
        if !(svc_progress.synced && slice_progress.synced && node_known) {
            continue;
        }
        let relisted = svc_progress.relisted || slice_progress.relisted;
        svc_progress.relisted = false;
        slice_progress.relisted = false;
        let changed_services = std::mem::take(&mut svc_progress.dirty);
        let changed_slices = std::mem::take(&mut slice_progress.dirty);
        let update = match &mut state {
            None => {
                let (st, t) = first_state(&services, &slices, &ctx, &mut ids);
                state = Some(st);
                status.synced.store(true, Ordering::Relaxed);
                KubeUpdate::Synced(t)
            }
            Some(st) => {
                let delta = if relisted {
                    st.rebuild(&services, &slices, &ctx, &mut ids)
                } else {
                    st.apply(
                        changed_services,
                        changed_slices,
                        &services,
                        &slices,
                        &ctx,
                        &mut ids,
                    )
                };
                let Some(delta) = delta else { continue };
                KubeUpdate::Changed(delta)
            }
        };
        if tx.send(update).is_err() {
            return;
        }
    }
}

/// What this node's `Node` object is read for: what the command line did
/// not give.
struct NodeWanted {
    addresses: bool,
    zone: bool,
}

impl NodeWanted {
    /// `None`: nothing (no node name, or everything given).
    fn of(ctx: &TranslateContext) -> Option<Self> {
        let wanted = Self {
            addresses: ctx.node_addresses.is_empty(),
            zone: ctx.node_zone.is_none(),
        };
        (ctx.node_name.is_some() && (wanted.addresses || wanted.zone)).then_some(wanted)
    }

    /// Takes the node's addresses and zone (`None`: no such node) into
    /// `ctx`; whether it changed.
    fn apply(&self, node: Option<&Node>, ctx: &mut TranslateContext) -> bool {
        let before = (ctx.node_addresses.clone(), ctx.node_zone.clone());
        if self.addresses {
            ctx.node_addresses = node.map(node_addresses).unwrap_or_default();
        }
        if self.zone {
            ctx.node_zone = node.and_then(|n| {
                n.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ZONE_LABEL))
                    .cloned()
            });
        }
        before != (ctx.node_addresses.clone(), ctx.node_zone.clone())
    }
}

/// The label naming a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A node's `InternalIP` and `ExternalIP` addresses, in its order, once
/// each (kube-proxy serves node ports on the node's IPs).
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
    {
        if (a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            && let Ok(ip) = a.address.parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// This node's object, read now and every `node_refresh` after (errors
/// retried with the backoff); `None`: no such node.
fn node_stream(
    client: kube::Client,
    name: String,
    opts: &KubeOptions,
) -> futures::stream::BoxStream<'static, Option<Node>> {
    let api = Api::<Node>::all(client);
    let refresh = opts.node_refresh;
    let backoff_opts = opts.backoff.clone();
    futures::stream::unfold(
        (api, name, Duration::ZERO, Exponential::new(backoff_opts)),
        move |(api, name, delay, mut backoff)| async move {
            tokio::time::sleep(delay).await;
            loop {
                match api.get_opt(&name).await {
                    Ok(node) => {
                        if node.is_none() {
                            warn!(node = %name, "no such Node: no node addresses or zone from it");
                        }
                        backoff.reset();
                        return Some((node, (api, name, refresh, backoff)));
                    }
                    Err(e) => {
                        warn!(node = %name, "reading the Node: {e}");
                        let d = backoff.next().unwrap_or(refresh);
                        tokio::time::sleep(d).await;
                    }
                }
            }
        },
    )
    .boxed()
}

/// The whole cluster translated, once both initial lists are complete.
fn first_state(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    ctx: &TranslateContext,
    ids: &mut IdAllocator,
) -> (Incremental, Translation) {
    let started = std::time::Instant::now();
    let mut st = Incremental::default();
    let delta = st.rebuild(services, slices, ctx, ids).unwrap_or_default();
    let t = Translation {
        specs: delta.specs,
        info: delta.info,
        errors: delta.errors,
        skipped: delta.skipped,
    };
    info!(
        specs = t.specs.len(),
        errors = t.errors.len(),
        translate_ms = started.elapsed().as_millis() as u64,
        "Kubernetes state synced"
    );
    (st, t)
}

/// Watcher events of both resources, as one stream.
type Events = futures::stream::Select<
    futures::stream::BoxStream<'static, Result<Signal<Service>, Signal<EndpointSlice>>>,
    futures::stream::BoxStream<'static, Result<Signal<Service>, Signal<EndpointSlice>>>,
>;

/// Starts watching both resources into their stores.
fn watch(
    client: &kube::Client,
    opts: &KubeOptions,
) -> (Store<Service>, Store<EndpointSlice>, Events) {
    let config = watcher::Config::default().labels(LABEL_SELECTOR);
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let svc_stream = with_retry(
        watcher(Api::<Service>::all(client.clone()), config.clone()).reflect(svc_writer),
        &opts.backoff,
    )
    .map(|ev| Ok(Signal::of(ev)))
    .boxed();
    let slice_stream = with_retry(
        watcher(Api::<EndpointSlice>::all(client.clone()), config).reflect(slice_writer),
        &opts.backoff,
    )
    .map(|ev| Err(Signal::of(ev)))
    .boxed();
    (
        services,
        slices,
        futures::stream::select(svc_stream, slice_stream),
    )
}

/// How soon to look again whether the consumer took the last update.
const RETRY: Duration = Duration::from_millis(1);

/// Feeds one watcher event to its resource's progress; whether a store
/// changed.
fn take(
    item: Result<Signal<Service>, Signal<EndpointSlice>>,
    services: &mut Progress<Service>,
    slices: &mut Progress<EndpointSlice>,
    status: &Status,
) -> bool {
    match item {
        Ok(signal) => services.signal(signal, status),
        Err(signal) => slices.signal(signal, status),
    }
}
