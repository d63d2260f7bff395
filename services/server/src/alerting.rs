//! Alerting: rules evaluated on every cluster's health findings (`rules`), and the alerts they
//! raise delivered to each organization's channels.

pub mod rules;
