//! A typed answer that keeps the API's JSON as sent, for callers that show it (the CLI's
//! `--output json`) as well as read it.

use serde::de::DeserializeOwned;

use super::Result;

/// What the API answered: read as `T`, and the JSON itself, with every field the server sent.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub value: T,
    pub json: serde_json::Value,
}

impl<T: DeserializeOwned> Reply<T> {
    pub(crate) fn from_json(json: serde_json::Value) -> Result<Self> {
        Ok(Reply { value: T::deserialize(&json)?, json })
    }
}

impl<T> std::ops::Deref for Reply<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}
