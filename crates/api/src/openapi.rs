//! The OpenAPI 3.1 document, generated from the handlers' annotations and the wire
//! types, served at `/openapi.json` (without a token: it is the contract clients are
//! written against, and holds no data).
//!
//! Two things are added here rather than on each handler, so that no route can forget
//! them: the problem+json answers every operation can give (see `ErrorAnswers`), and
//! the `Identifier` schema of api.md (`crate::schema`) that every id field and path
//! segment refers to.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::schema::{AdjustReason, Allocation, Identifier, ReleaseReason, SkuList, Split};
use crate::{error, routes, wire};

/// This document, served (built once, on first request).
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi", security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
pub(crate) async fn serve() -> impl axum::response::IntoResponse {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    axum::Json(DOCUMENT.get_or_init(document))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "invsync", description = "Inventory reservation and synchronization API (v1)."),
    paths(
        routes::stock::get_one, routes::stock::list, routes::stock::snapshot, routes::stock::shortages,
        routes::adjustments::adjust, routes::adjustments::batch,
        routes::reservations::create, routes::reservations::get_one, routes::reservations::list,
        routes::reservations::release, routes::reservations::fulfil,
        routes::channels::put, routes::channels::get_one, routes::channels::list,
        routes::channels::set_safety_stock, routes::channels::get_safety_stock,
        routes::events::list, routes::events::recent, routes::stream::stream,
        routes::pipeline::storefront::availability, routes::pipeline::storefront::availability_list, routes::pipeline::storefront::rows, routes::pipeline::consumers::consumers,
        routes::pipeline::consumers::replay, routes::pipeline::dead_letters::dead_letters, routes::pipeline::dead_letters::redrive, routes::pipeline::consumers::overview,
        routes::health::healthz, routes::health::readyz, routes::health::metrics,
        serve, routes::health::dashboard, routes::health::whoami,
    ),
    components(schemas(
        Identifier, SkuList, AdjustReason, ReleaseReason, Allocation, Split,
        error::Problem, wire::LineBody, wire::ReserveBody, wire::ReleaseBody, wire::FulfilBody,
        wire::AdjustmentBody, wire::AdjustmentBatchBody, wire::StockView, wire::StockList,
        wire::StockPage, wire::SnapshotView, wire::AdjustmentView, wire::BatchView,
        wire::ReservationView, wire::ReservationLineView, wire::ReservationList,
        wire::AllocationView, wire::SettleLineBody, wire::ChannelLocationBody, wire::ChannelBody,
        wire::ChannelLocationView, wire::ChannelView, wire::ChannelList, wire::SafetyItemBody,
        wire::SafetyStockBody, wire::SafetyStockView, wire::SafetyOverrideView, wire::SafetyOverrideList,
        wire::EventView, wire::EventsView, wire::RecentEventsView, wire::ShortagesView, crate::auth::Identity,
        routes::pipeline::consumers::OverviewView, routes::pipeline::consumers::OverviewConsumer, crate::console::Point, crate::console::Outcomes,
        routes::pipeline::storefront::AvailabilityView, routes::pipeline::storefront::AvailabilityList, routes::pipeline::storefront::StoreAvailabilityView,
        routes::pipeline::storefront::ViewPage, routes::pipeline::consumers::ConsumersView, routes::pipeline::consumers::ReplayBody,
        routes::pipeline::dead_letters::DeadLetterView, routes::pipeline::dead_letters::DeadLettersView,
    )),
    modifiers(&BearerAuth, &ErrorAnswers),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The problem+json answers of every operation, by what the operation takes:
/// - every one: 500 (an internal error, logged);
/// - one that needs a token: 401 and 403;
/// - one with parameters or a body: 400 naming the field;
/// - one with path parameters: 404 (no such resource);
/// - one with a body: 413 and 415;
/// - one that reads the ledger or a consumer store: 503 (unavailable; retry).
///
/// Answers a handler declares itself (409 with its codes, say) keep their
/// description; their content type becomes `application/problem+json`.
struct ErrorAnswers;

/// Operations that answer without touching the ledger or a consumer store.
const NEVER_UNAVAILABLE: &[&str] = &[
    "healthz",
    "metrics",
    "openapi",
    "dashboard",
    "overview",
    "whoami",
];

impl Modify for ErrorAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                declare_errors(op);
            }
        }
    }
}

fn declare_errors(op: &mut Operation) {
    let public = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_path = params
        .iter()
        .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Path);
    let has_body = op.request_body.is_some();
    let id = op.operation_id.clone().unwrap_or_default();
    let mut codes = vec![(500, "internal error")];
    if !public {
        codes.push((401, "unauthorized: no token, or not a valid one"));
        codes.push((403, "forbidden: the token lacks the scope"));
    }
    if !params.is_empty() || has_body {
        codes.push((400, "invalid_request: `field` names the bad input"));
    }
    if has_path {
        codes.push((404, "not_found"));
    }
    if has_body {
        codes.push((413, "payload_too_large: the body is over 1 MiB"));
        codes.push((
            415,
            "unsupported_media_type: the body is not application/json",
        ));
    }
    if !NEVER_UNAVAILABLE.contains(&id.as_str()) {
        codes.push((503, "unavailable: retry later"));
    }
    let problem = || {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build()
    };
    let responses = &mut op.responses.responses;
    for (status, description) in codes {
        responses
            .entry(status.to_string())
            .or_insert_with(|| ResponseBuilder::new().description(description).into());
    }
    // An error answer with no content, or one a handler declared as `body = Problem`
    // (which utoipa files under application/json), is problem+json. Others (the 503
    // of /readyz, a plain status document) stay as declared.
    let is_problem = |content: &utoipa::openapi::Content| matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"));
    for (status, response) in responses.iter_mut() {
        let is_error = status.starts_with('4') || status.starts_with('5');
        if let (true, RefOr::T(response)) = (is_error, response) {
            if response.content.is_empty() || response.content.values().any(is_problem) {
                response.content.clear();
                response
                    .content
                    .insert("application/problem+json".to_owned(), problem());
            }
        }
    }
}

/// The document as served. On top of what the annotations generate, it states the
/// rules JSON Schema can express but utoipa's attributes cannot (see `refine`).
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    refine(&mut doc);
    doc
}

/// Rules the server enforces that the generated schema would otherwise leave out, so
/// that a client generated from the document (or a contract fuzzer) knows them:
/// - a parameter that is absent is never `null` (HTTP has no null): optional
///   parameters lose the `"null"` type utoipa gives `Option<T>`;
/// - an adjustment has exactly one of `delta` and `set_on_hand`, and `delta` is never
///   0; a replay has exactly one of `from_offset` and `since`; a reservation exactly
///   one of `store_id` and `channel`.
fn refine(doc: &mut serde_json::Value) {
    use serde_json::{json, Value};
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
        {
            let params = op.get_mut("parameters").and_then(Value::as_array_mut);
            for param in params.into_iter().flatten() {
                let types = param
                    .pointer_mut("/schema/type")
                    .and_then(Value::as_array_mut);
                if let Some(types) = types {
                    types.retain(|t| t != "null");
                    if types.len() == 1 {
                        param["schema"]["type"] = types[0].clone();
                    }
                }
            }
        }
    }
    // The one given must be given a value: a `null` is as good as absent.
    let one_of = |fields: [&str; 2]| {
        json!(fields.map(|f| json!({"required": [f], "properties": {f: {"not": {"type": "null"}}}})))
    };
    let schemas = &mut doc["components"]["schemas"];
    if schemas["AdjustmentBody"].is_object() {
        schemas["AdjustmentBody"]["oneOf"] = one_of(["delta", "set_on_hand"]);
        schemas["AdjustmentBody"]["properties"]["delta"]["not"] = json!({"const": 0});
    }
    if schemas["ReplayBody"].is_object() {
        schemas["ReplayBody"]["oneOf"] = one_of(["from_offset", "since"]);
    }
    if schemas["ReserveBody"].is_object() {
        schemas["ReserveBody"]["oneOf"] = one_of(["store_id", "channel"]);
    }
}
