//! `GET /v1/models` and `GET /v1/models/{id}` bodies, from the configured catalog.

use bytes::Bytes;
use serde::Serialize;

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'a str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

/// One model object.
pub fn model_object(id: &str, owned_by: &str, created: u64) -> Bytes {
    to_bytes(&ModelObject {
        id,
        object: "model",
        created,
        owned_by,
    })
}

/// The list of `(id, owned_by)` pairs, in the order given.
pub fn model_list<'a>(models: impl Iterator<Item = (&'a str, &'a str)>, created: u64) -> Bytes {
    to_bytes(&ModelList {
        object: "list",
        data: models
            .map(|(id, owned_by)| ModelObject {
                id,
                object: "model",
                created,
                owned_by,
            })
            .collect(),
    })
}

fn to_bytes(value: &impl Serialize) -> Bytes {
    // Structs of strings and integers always serialize.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}
