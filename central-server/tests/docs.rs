//! `GET /docs` in a real headless Chromium: the page renders from the server's own OpenAPI
//! document with nothing fetched from anywhere else, and every operation and schema of the
//! document is on it.

mod common;

use common::TestServer;
use reqwest::StatusCode;

#[tokio::test]
async fn the_api_docs_render_offline_in_a_browser() {
    let server = TestServer::start().await;
    let response = server
        .client
        .get(server.url("/docs"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = response.text().await.expect("page");
    // Nothing on the page loads from elsewhere: no script, no stylesheet link, no image.
    for tag in ["<script", "<link", "<img", "@import", "url("] {
        assert!(!html.contains(tag), "the page holds {tag}");
    }

    let dom = stile_testkit::browser::dump_dom(&server.url("/docs")).await;
    let doc = central_server::openapi::document();
    assert!(dom.contains("Stile central server"), "title rendered");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("operations").keys() {
            let id = format!("{method}-{path}")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>();
            assert!(
                dom.contains(&format!("id=\"op-{id}\"")),
                "{method} {path} on the page"
            );
            operations += 1;
        }
    }
    assert!(operations > 20, "{operations} operations");
    for name in doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
    {
        assert!(
            dom.contains(&format!("id=\"schema-{name}\"")),
            "schema {name} on the page"
        );
    }
    // A reference links to its schema, and the contract's codes are spelled out.
    assert!(dom.contains("<a href=\"#schema-ScanResponse\">ScanResponse</a>"));
    assert!(dom.contains("VENUE_FULL") && dom.contains("ALREADY_REDEEMED"));
    server.stop().await;
}
