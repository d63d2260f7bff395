//! The OpenAPI schema of `CreateCommandRequest`, written out because the parameters a command
//! takes depend on its kind: one alternative per kind, built from `KINDS` and
//! `allowed_params`, so the document changes when the rules do.

use utoipa::openapi::schema::{AdditionalProperties, Object, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use super::typed::allowed_params;
use super::{CreateCommandRequest, KINDS};
use crate::domain::schema as rules;

/// Characters `str::trim` removes; a version of only these is blank.
const BLANK: &str = "\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

fn integer(min: i64, max: i64) -> Object {
    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(min)).maximum(Some(max)).build()
}

fn nullable(t: Type) -> SchemaType {
    SchemaType::Array(vec![t, Type::Null])
}

/// The schema of one parameter, as `typed::from_rest` checks it.
fn param(name: &str) -> Schema {
    Schema::Object(match name {
        "selector" => rules::selector(),
        "batch_size" => integer(1, 1000),
        "max_unavailable" => integer(0, 1000),
        "timeout_secs" => integer(1, 86_400),
        "version" => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(format!("[^{BLANK}]")))
            .max_length(Some(128))
            .description(Some("The version to run, e.g. 0.2.0"))
            .build(),
        _ => ObjectBuilder::new().schema_type(Type::String).build(),
    })
}

/// The request for one kind: its parameters, which of them are required, and nothing else.
fn for_kind(kind: &str) -> Object {
    let required: &[&str] = if kind == "set-control-plane-version" { &["version"] } else { &[] };
    let mut params = ObjectBuilder::new()
        .schema_type(if required.is_empty() { nullable(Type::Object) } else { SchemaType::Type(Type::Object) })
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    for name in allowed_params(kind) {
        params = params.property(*name, param(name));
    }
    for name in required {
        params = params.required(*name);
    }
    let deadline = ObjectBuilder::new()
        .schema_type(nullable(Type::Integer))
        .minimum(Some(1))
        .maximum(Some(86_400))
        .description(Some("Seconds the agent has to finish (default 600)"));
    let mut request = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("kind", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([kind])))
        .required("kind")
        .property("params", params.description(Some("The kind's parameters, a JSON object")))
        .property("deadline_secs", deadline)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    if !required.is_empty() {
        request = request.required("params");
    }
    request.build()
}

impl PartialSchema for CreateCommandRequest {
    fn schema() -> RefOr<Schema> {
        let one_of = KINDS.iter().fold(OneOfBuilder::new(), |b, kind| b.item(for_kind(kind)));
        one_of.description(Some("A command; `kind` decides which `params` it takes")).into()
    }
}

impl ToSchema for CreateCommandRequest {}
