//! Typed validation: every write must deserialize into its k8s-openapi type, so the fake
//! accepts only objects a real API server could hold (schema-wise; not every field rule).

use k8s_openapi::api::{admissionregistration, apps, coordination, core, rbac};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::resources::{def, Res};

fn check<T: DeserializeOwned>(v: &Value) -> Result<(), String> {
    serde_json::from_value::<T>(v.clone()).map(|_| ()).map_err(|e| format!("{e}"))
}

pub fn object(res: Res, v: &Value) -> Result<(), String> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        return Err("metadata is required".into());
    }
    // apiVersion/kind may be omitted by clients; the store sets them.
    let mut v = v.clone();
    let d = def(res);
    v["apiVersion"] = Value::String(d.api_version());
    v["kind"] = Value::String(d.kind.into());
    match d.kind {
        "Namespace" => check::<core::v1::Namespace>(&v),
        "Node" => check::<core::v1::Node>(&v),
        "Pod" => check::<core::v1::Pod>(&v),
        "Secret" => check::<core::v1::Secret>(&v),
        "ConfigMap" => check::<core::v1::ConfigMap>(&v),
        "Event" => check::<core::v1::Event>(&v),
        "ServiceAccount" => check::<core::v1::ServiceAccount>(&v),
        "Deployment" => check::<apps::v1::Deployment>(&v),
        "ReplicaSet" => check::<apps::v1::ReplicaSet>(&v),
        "DaemonSet" => check::<apps::v1::DaemonSet>(&v),
        "StatefulSet" => check::<apps::v1::StatefulSet>(&v),
        "Service" => check::<core::v1::Service>(&v),
        "EndpointSlice" => check::<k8s_openapi::api::discovery::v1::EndpointSlice>(&v),
        "PodDisruptionBudget" => check::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(&v),
        "Lease" => check::<coordination::v1::Lease>(&v),
        "Role" => check::<rbac::v1::Role>(&v),
        "RoleBinding" => check::<rbac::v1::RoleBinding>(&v),
        "ClusterRole" => check::<rbac::v1::ClusterRole>(&v),
        "ClusterRoleBinding" => check::<rbac::v1::ClusterRoleBinding>(&v),
        "MutatingWebhookConfiguration" => check::<admissionregistration::v1::MutatingWebhookConfiguration>(&v),
        _ => Ok(()),
    }
}
