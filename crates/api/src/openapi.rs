//! The OpenAPI 3.1 document, generated from the handlers' annotations and the wire
//! types, served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{error, routes, wire};

#[derive(OpenApi)]
#[openapi(
    info(title = "invsync", description = "Inventory reservation and synchronization API (v1)."),
    paths(
        routes::stock::get_one, routes::stock::list, routes::stock::snapshot,
        routes::adjustments::adjust, routes::adjustments::batch,
        routes::reservations::create, routes::reservations::get_one, routes::reservations::list,
        routes::reservations::release, routes::reservations::fulfil,
        routes::events::list, routes::stream::stream,
        routes::pipeline::availability, routes::pipeline::rows, routes::pipeline::consumers,
        routes::pipeline::replay, routes::pipeline::dead_letters, routes::pipeline::redrive,
    ),
    components(schemas(
        error::Problem, wire::LineBody, wire::ReserveBody, wire::ReleaseBody, wire::FulfilBody,
        wire::AdjustmentBody, wire::AdjustmentBatchBody, wire::StockView, wire::StockList,
        wire::StockPage, wire::SnapshotView, wire::AdjustmentView, wire::BatchView,
        wire::ReservationView, wire::ReservationLineView, wire::ReservationList,
        wire::EventView, wire::EventsView,
        routes::pipeline::AvailabilityView, routes::pipeline::StoreAvailabilityView,
        routes::pipeline::ViewPage, routes::pipeline::ConsumersView, routes::pipeline::ReplayBody,
        routes::pipeline::DeadLetterView, routes::pipeline::DeadLettersView,
    )),
    modifiers(&BearerAuth),
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

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
