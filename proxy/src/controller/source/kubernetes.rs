//! The Kubernetes source: the issuer Secret (`tls.crt`, `tls.key`; `ca.crt` is ignored) and the
//! trust-bundle ConfigMap (`ca-bundle.crt`), watched by name in the controller's namespace and
//! offered to the switch on every change. It only reads; it never writes to the API.

use std::fmt::Debug;
use std::hash::Hash;
use std::pin::pin;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::{reflector, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};

use crate::controller::issuer::{IssuerError, Sources};
use crate::controller::reload::Offer;
use crate::controller::Config;

use meshfleet_pki::names::{ISSUER_CERT_KEY as CERT_KEY, ISSUER_KEY_KEY as KEY_KEY, TRUST_BUNDLE_KEY as BUNDLE_KEY};

enum Seen {
    Secret(Option<Arc<Secret>>),
    Bundle(Option<Arc<ConfigMap>>),
}

/// The object named `name` as it stands after each change (None: it does not exist), from a
/// kube-rs watcher that lists, watches and re-lists with backoff on its own.
fn follow<K>(api: Api<K>, name: &str) -> impl Stream<Item = Option<Arc<K>>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let name = name.to_owned();
    // Init and InitApply are a re-list in progress: the store changes only at InitDone.
    reflector(writer, watcher(api, config)).default_backoff().filter_map(move |event| match event {
        Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => Some(store.state().into_iter().find(|o| o.meta().name.as_deref() == Some(&name))),
        Ok(Event::Init | Event::InitApply(_)) => None,
        Err(e) => {
            tracing::warn!(error = %e, object = %name, "watch failed; retrying");
            None
        }
    })
}

/// Offers the Secret and ConfigMap on every change until the switch stops listening.
pub(in crate::controller) async fn watch(client: Client, config: Config, offers: mpsc::Sender<Offer>) {
    let secrets = follow(Api::<Secret>::namespaced(client.clone(), &config.namespace), &config.issuer_secret).map(Seen::Secret);
    let bundles = follow(Api::<ConfigMap>::namespaced(client, &config.namespace), &config.trust_bundle_configmap).map(Seen::Bundle);
    let mut seen = pin!(secrets.merge(bundles));
    // The outer None: not listed yet, so start-up does not report the slower one as missing.
    let (mut secret, mut bundle) = (None, None);
    while let Some(s) = seen.next().await {
        match s {
            Seen::Secret(s) => secret = Some(s),
            Seen::Bundle(b) => bundle = Some(b),
        }
        if let (Some(s), Some(b)) = (&secret, &bundle) {
            if offers.send(sources(s.as_deref(), b.as_deref(), &config)).await.is_err() {
                return;
            }
        }
    }
}

fn sources(secret: Option<&Secret>, bundle: Option<&ConfigMap>, c: &Config) -> Offer {
    let secret_name = format!("Secret {}/{}", c.namespace, c.issuer_secret);
    let map_name = format!("ConfigMap {}/{}", c.namespace, c.trust_bundle_configmap);
    let secret = secret.ok_or_else(|| IssuerError::Missing(secret_name.clone()))?;
    let key = |k: &str| {
        let value = secret.data.as_ref().and_then(|d| d.get(k));
        value.map(|b| b.0.clone()).ok_or_else(|| IssuerError::Missing(format!("key {k:?} of {secret_name}")))
    };
    let map = bundle.ok_or_else(|| IssuerError::Missing(map_name.clone()))?;
    let pem = map.data.as_ref().and_then(|d| d.get(BUNDLE_KEY)).map(|s| s.as_bytes().to_vec());
    let bundle = pem.ok_or_else(|| IssuerError::Missing(format!("key {BUNDLE_KEY:?} of {map_name}")))?;
    Ok(Sources { issuer_cert: key(CERT_KEY)?, issuer_key: key(KEY_KEY)?, bundle })
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use k8s_openapi::ByteString;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn missing_objects_and_keys_are_refusals_not_panics() {
        let c = Cli::parse_from(["x"]).config;
        let secret = Secret {
            data: Some([(CERT_KEY.to_string(), ByteString(b"cert".to_vec())), (KEY_KEY.to_string(), ByteString(b"key".to_vec()))].into()),
            ..Default::default()
        };
        let map = ConfigMap { data: Some([(BUNDLE_KEY.to_string(), "pem".to_string())].into()), ..Default::default() };
        let src = sources(Some(&secret), Some(&map), &c).unwrap();
        assert_eq!((src.issuer_cert, src.issuer_key, src.bundle), (b"cert".to_vec(), b"key".to_vec(), b"pem".to_vec()));
        for (s, m) in [(None, Some(&map)), (Some(&secret), None), (Some(&Secret::default()), Some(&map)), (Some(&secret), Some(&ConfigMap::default()))] {
            let err = sources(s, m, &c).err().unwrap();
            assert_eq!(err.metric_label(), "missing", "{err}");
        }
    }
}
