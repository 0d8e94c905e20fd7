//! The OpenAPI document served on `GET /openapi.json`, generated from the handlers'
//! annotations and the shared API types. Where the contract is silent, the choices made
//! here (status codes, error bodies) are written in the handlers' annotations.

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stile central server",
        description = "Ticket validation: operator login, atomic redemption, QR issuance. Every error body is {\"code\", \"message\"}; messages are zh-CN unless Accept-Language starts with `en`. Bodies over 64 KiB answer 413, non-JSON bodies 415, unknown paths 404 and wrong methods 405, all with the same error body."
    ),
    paths(
        crate::http::operator::login,
        crate::http::venue::venue_scan,
        crate::http::venue::qr_decrypt,
        crate::http::channel::issue_qr,
        crate::http::ops::published_keys,
        crate::http::ops::healthz,
        crate::http::ops::readyz,
        crate::http::ops::openapi,
        crate::http::docs::docs,
        crate::http::merchant::merchant_scan,
        crate::http::merchant::merchant_order,
        crate::http::merchant::merchant_redemptions,
        crate::http::merchant::merchant_redemptions_csv,
        crate::http::merchant::merchant_occupancy,
        crate::http::venue::venue_scan_by_id,
        crate::http::device::device_keys,
        crate::http::device::device_tickets,
        crate::http::device::device_operators,
        crate::http::device::device_history,
        crate::http::device::device_occupancy,
        crate::http::device::device_decisions,
        crate::http::device::device_enroll,
        crate::http::device::device_register_peer,
        crate::http::device::device_peers,
        crate::http::operator::logout_everywhere,
    ),
    components(schemas(
        stile_shared::api::ErrorBody,
        stile_shared::ApiCode,
        stile_shared::DecisionCode,
        DecisionOrError,
        MerchantAnswerOrError,
    )),
    modifiers(&SecuritySchemes, &WireErrors)
)]
pub struct ApiDoc;

/// A status answered either with a decision body (`{result, code, message, ...}`) or with a
/// plain error body (`{code, message}`, nothing else): `/venue/scan` says 400 `INVALID_QR` as
/// a decision and 400 `BAD_REQUEST` as an error.
pub struct DecisionOrError;

impl utoipa::PartialSchema for DecisionOrError {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name("ScanResponse"))
            .item(Ref::from_schema_name("ErrorBody"))
            .into()
    }
}

impl utoipa::ToSchema for DecisionOrError {}

/// The console's `{code, message, result: reject, tickets}` or a plain error body.
pub struct MerchantAnswerOrError;

impl utoipa::PartialSchema for MerchantAnswerOrError {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name("MerchantScanResponse"))
            .item(Ref::from_schema_name("ErrorBody"))
            .into()
    }
}

impl utoipa::ToSchema for MerchantAnswerOrError {}

/// What every operation can answer besides its own statuses, written into the document so
/// it describes the wire: the error body is exactly `{code, message}`; any operation may be
/// refused by the HTTP layer (400 malformed request, 408 too slow, 413 body over the limit,
/// 414 target too long, 431 headers too large, 503 over the connection limit or with the
/// database away) or fail (500);
/// an operation with a JSON body answers 415 for another media type.
struct WireErrors;

impl Modify for WireErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        // {code, message} and nothing else, so a decision body never passes for one.
        components.schemas.insert(
            "ErrorBody".into(),
            ObjectBuilder::new()
                .description(Some(
                    "The body of every error answer: `{\"code\", \"message\"}`.",
                ))
                .property("code", Ref::from_schema_name("ApiCode"))
                .property("message", ObjectBuilder::new().schema_type(Type::String))
                .required("code")
                .required("message")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .into(),
        );
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let has_body = operation.request_body.is_some();
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::T(error(description)));
                };
                add(
                    "400",
                    "BAD_REQUEST: a malformed request (the message says what)",
                );
                add(
                    "408",
                    "BAD_REQUEST: the request was not complete within the request deadline",
                );
                add("413", "PAYLOAD_TOO_LARGE: the body (or its announced Content-Length) is over the operation's limit");
                add("414", "BAD_REQUEST: the request target is over 8 KiB");
                add("431", "BAD_REQUEST: the request headers are over 32 KiB");
                add(
                    "500",
                    "INTERNAL: an unexpected failure (logged; the body says nothing more)",
                );
                add(
                    "503",
                    "SERVICE_UNAVAILABLE: the database is away (unreachable, shutting down, a standby, or no answer within db_deadline_ms); or TOO_MANY_REQUESTS: the server is at its connection limit. Both carry Retry-After; retry, a gate decides offline",
                );
                if has_body {
                    add(
                        "415",
                        "UNSUPPORTED_MEDIA_TYPE: the body is not application/json",
                    );
                }
            }
        }
    }
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The token from POST /operators/login"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "device_credential",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("<device_id>:<secret>"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "channel_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A sales channel's API key"))
                    .build(),
            ),
        );
    }
}

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| serde_json::json!({}))
}
