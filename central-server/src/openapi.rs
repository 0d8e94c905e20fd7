//! The OpenAPI document served on `GET /openapi.json`, generated from the handlers'
//! annotations and the shared API types. Where the contract is silent, the choices made
//! here (status codes, error bodies) are written in the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
        crate::http::ops::metrics,
        crate::http::ops::openapi,
        crate::http::ops::admin_seed,
        crate::http::merchant::merchant_scan,
        crate::http::merchant::merchant_order,
        crate::http::merchant::merchant_redemptions,
        crate::http::merchant::merchant_redemptions_csv,
        crate::http::venue::venue_scan_by_id,
        crate::http::device::device_keys,
        crate::http::device::device_tickets,
        crate::http::device::device_operators,
        crate::http::device::device_history,
        crate::http::device::device_decisions,
    ),
    components(schemas(
        stile_shared::api::ErrorBody,
        stile_shared::ApiCode,
        stile_shared::DecisionCode,
    )),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

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
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("STILE_ADMIN_TOKEN"))
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
