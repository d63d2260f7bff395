//! Discovery: the `meshfleet.destination.v1.Destination` service. Services, EndpointSlices and
//! Pods are mirrored with kube-rs reflectors; `Resolve` answers a Service name or an IP and port
//! with the ready endpoints behind it, each with the identity its proxy must prove. Read-only:
//! it never writes to the API.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use meshfleet_pki::spiffe::WorkloadId;
use prometheus::IntGauge;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::inject::VERSION_LABEL;
use super::metrics::Metrics;
use crate::destination::{pb, Target};

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The cluster as discovery sees it: three reflector stores and a counter bumped after each
/// change once all three have listed (0 until then, so nobody is answered from a partial view).
pub struct Index {
    services: reflector::Store<Service>,
    slices: reflector::Store<EndpointSlice>,
    pods: reflector::Store<Pod>,
    trust_domain: String,
    changes: watch::Sender<u64>,
}

impl Index {
    /// Starts the reflectors; the returned future drives them (list, watch, re-list with backoff)
    /// and must be spawned.
    pub fn start(client: Client, trust_domain: String) -> (Arc<Index>, impl std::future::Future<Output = ()> + Send) {
        let (services, sw) = reflector::store();
        let (slices, lw) = reflector::store();
        let (pods, pw) = reflector::store();
        let (changes, _) = watch::channel(0);
        let index = Arc::new(Index { services, slices, pods, trust_domain, changes });
        let driver =
            {
                let index = index.clone();
                async move {
                    let events = mirror(Api::<Service>::all(client.clone()), sw, 0)
                        .merge(mirror(Api::<EndpointSlice>::all(client.clone()), lw, 1))
                        .merge(mirror(Api::<Pod>::all(client), pw, 2));
                    let mut events = pin!(events);
                    let mut listed = [false; 3];
                    while let Some((kind, listing_done)) = events.next().await {
                        listed[kind] |= listing_done;
                        if listed.iter().all(|l| *l) {
                            index.changes.send_modify(|n| *n += 1);
                        }
                    }
                }
            };
        (index, driver)
    }

    fn trust(&self, pod: &Pod) -> (bool, String) {
        let meshed = pod.labels().contains_key(VERSION_LABEL);
        let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()).unwrap_or("default");
        let id = WorkloadId::new(&self.trust_domain, &pod.namespace().unwrap_or_default(), sa).map(|id| id.to_string());
        match id {
            Ok(id) if meshed => (true, id),
            _ => (false, String::new()),
        }
    }

    fn endpoint(&self, pod: &Pod, address: SocketAddr) -> pb::Endpoint {
        let (meshed, identity) = self.trust(pod);
        pb::Endpoint { address: address.to_string(), meshed, identity, pod: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()) }
    }

    /// The current answer for `target`.
    pub fn resolve(&self, target: &Target) -> pb::Endpoints {
        let service = match target {
            Target::Service { name, namespace, .. } => self.services.get(&ObjectRef::new(name).within(namespace)),
            Target::Addr(addr) => {
                self.services.find(|s| s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).and_then(|ip| ip.parse::<IpAddr>().ok()) == Some(addr.ip()))
            }
        };
        let port = match target {
            Target::Service { port, .. } => *port,
            Target::Addr(addr) => addr.port(),
        };
        match (service, target) {
            (Some(svc), _) => pb::Endpoints { endpoints: self.service_endpoints(&svc, port), exists: true },
            // Not a Service's IP: a pod's, dialled directly (a headless Service, a StatefulSet peer).
            (None, Target::Addr(addr)) => match self.pods.find(|p| pod_ip(p) == Some(addr.ip())) {
                Some(pod) if ready(&pod) => pb::Endpoints { endpoints: vec![self.endpoint(&pod, *addr)], exists: true },
                Some(_) => pb::Endpoints { endpoints: Vec::new(), exists: true },
                None => pb::Endpoints::default(),
            },
            (None, Target::Service { .. }) => pb::Endpoints::default(),
        }
    }

    /// The ready endpoints of `svc` for its port `port`: each slice's port of the same name,
    /// each address whose pod is known (a pod not mirrored yet joins at the next change, so an
    /// endpoint is never offered without knowing whether it is meshed).
    fn service_endpoints(&self, svc: &Service, port: u16) -> Vec<pb::Endpoint> {
        let Some(svc_port) = svc.spec.as_ref().and_then(|s| s.ports.as_ref()).and_then(|ps| ps.iter().find(|p| p.port == i32::from(port))) else {
            return Vec::new();
        };
        let port_name = svc_port.name.as_deref().unwrap_or("");
        let (name, ns) = (svc.name_any(), svc.namespace().unwrap_or_default());
        let mut out = BTreeMap::new();
        let slices = self.slices.state_filter(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.labels().get(SERVICE_NAME_LABEL) == Some(&name));
        for slice in slices {
            let Some(p) = slice.ports.iter().flatten().find(|p| p.name.as_deref().unwrap_or("") == port_name).and_then(|p| p.port) else { continue };
            let Ok(p) = u16::try_from(p) else { continue };
            // A ready condition left unset means ready (the EndpointSlice API's rule).
            for e in slice.endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false)) {
                let Some(pod) = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| {
                    let pod_ns = r.namespace.as_deref().unwrap_or(&ns);
                    self.pods.get(&ObjectRef::new(r.name.as_deref()?).within(pod_ns))
                }) else {
                    continue;
                };
                for ip in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    let addr = SocketAddr::new(ip, p);
                    out.insert(addr.to_string(), self.endpoint(&pod, addr));
                }
            }
        }
        out.into_values().collect()
    }

    /// The answers for `target`: the current one at once, then each different one after a change.
    pub fn follow(self: &Arc<Self>, target: Target) -> impl Stream<Item = pb::Endpoints> + Send + 'static {
        let index = self.clone();
        let mut last = None;
        tokio_stream::wrappers::WatchStream::new(self.changes.subscribe()).filter_map(move |n| {
            if n == 0 {
                return None;
            }
            let msg = index.resolve(&target);
            (last.as_ref() != Some(&msg)).then(|| {
                last = Some(msg.clone());
                msg
            })
        })
    }
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One kind mirrored into `writer`: yields (kind, whether a listing just completed) after every
/// change the store took. Watch errors are logged; the watcher re-lists with backoff by itself.
fn mirror<K>(api: Api<K>, writer: reflector::store::Writer<K>, kind: usize) -> impl Stream<Item = (usize, bool)> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    // Pods carry a lot that discovery never reads; managed fields are the bulk of it.
    let stream = watcher(api, watcher::Config::default()).default_backoff().modify(|o: &mut K| o.meta_mut().managed_fields = None);
    reflector::reflector(writer, stream).filter_map(move |event| match event {
        Ok(Event::Apply(_) | Event::Delete(_)) => Some((kind, false)),
        Ok(Event::InitDone) => Some((kind, true)),
        Ok(Event::Init | Event::InitApply(_)) => None,
        Err(e) => {
            tracing::warn!(error = %e, kind, "discovery watch failed; retrying");
            None
        }
    })
}

type EndpointsStream = Pin<Box<dyn Stream<Item = Result<pb::Endpoints, Status>> + Send>>;

/// The gRPC service; with discovery off (no `--discovery`) every Resolve is Unavailable.
pub struct DestinationService {
    pub index: Option<Arc<Index>>,
    pub metrics: Metrics,
}

/// Counts a Resolve stream as open until the stream drops.
struct Open(IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[tonic::async_trait]
impl pb::destination_server::Destination for DestinationService {
    type ResolveStream = EndpointsStream;

    async fn resolve(&self, request: Request<pb::ResolveRequest>) -> Result<Response<EndpointsStream>, Status> {
        let target: Target = request.into_inner().target.parse().map_err(Status::invalid_argument)?;
        let index = self.index.as_ref().ok_or_else(|| Status::unavailable("discovery is off (--discovery)"))?;
        tracing::debug!(%target, "resolve");
        self.metrics.destination_streams.inc();
        let (open, updates) = (Open(self.metrics.destination_streams.clone()), self.metrics.destination_updates.clone());
        Ok(Response::new(Box::pin(index.follow(target).map(move |msg| {
            let _open = &open;
            updates.inc();
            Ok(msg)
        }))))
    }
}
