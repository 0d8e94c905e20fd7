//! `GET /docs`: the OpenAPI document rendered as one readable HTML page, on the server, from
//! the same document `/openapi.json` serves. No script, no font, no asset from anywhere
//! else: the page and its style sheet are in the binary, so the docs read the same on a
//! machine with no internet.
//!
//! The renderer is a pure function of the document ([`render`]): every operation by tag
//! (method, path, summary, parameters, request body, responses) and every schema (its
//! properties, their types and whether they are required), with links from each reference
//! to its schema.

use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;
use stile_shared::html::escape;

/// The API docs, readable in a browser.
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "The OpenAPI document rendered as HTML, with no external assets", content_type = "text/html")))]
pub async fn docs(State(state): State<AppState>) -> Response {
    let mut response = render(&state.openapi).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page loads nothing: a policy that allows nothing but its own inline style says so.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}

const STYLE: &str = "body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}\
main{max-width:1100px;margin:0 auto;padding:1em 1.5em}h1{font-size:24px}h2{font-size:19px;border-bottom:2px solid #d0d5db;padding-bottom:.2em;margin-top:1.6em}\
h3{font-size:16px;margin:0 0 .4em}.op{background:#fff;border-radius:8px;padding:.8em 1em;margin:.8em 0;box-shadow:0 1px 2px #0002}\
.method{display:inline-block;min-width:4.2em;text-align:center;border-radius:4px;color:#fff;font-weight:700;font-size:13px;padding:.1em .4em;margin-right:.5em}\
.get{background:#1a73e8}.post{background:#188038}.put{background:#b06000}.delete{background:#c5221f}.patch{background:#8430ce}\
code,.path{font-family:ui-monospace,monospace}.path{font-weight:600}table{border-collapse:collapse;width:100%;margin:.4em 0}\
td,th{border-bottom:1px solid #e3e6ea;padding:.3em .5em;text-align:left;vertical-align:top;font-size:14px}th{background:#f0f2f4}\
.req{color:#c5221f;font-weight:600}nav a{margin-right:.8em}p{margin:.3em 0}";

/// Renders the whole document as one page.
pub fn render(doc: &Value) -> String {
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let version = doc["info"]["version"].as_str().unwrap_or("");
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head><body><main>\
         <h1 id=\"title\">{t} <small>{v}</small></h1><p id=\"description\">{d}</p>\
         <p>The machine-readable document: <a href=\"/openapi.json\">/openapi.json</a>.</p>",
        t = escape(title),
        v = escape(version),
        d = escape(doc["info"]["description"].as_str().unwrap_or("")),
    );
    // Operations by their first tag, tags in name order, operations in path order.
    let mut by_tag: BTreeMap<String, Vec<(String, String, &Value)>> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            let tag = operation["tags"][0].as_str().unwrap_or("other").to_owned();
            by_tag
                .entry(tag)
                .or_default()
                .push((path.clone(), method.clone(), operation));
        }
    }
    page.push_str("<nav id=\"tags\">");
    for tag in by_tag.keys() {
        let _ = write!(page, "<a href=\"#tag-{0}\">{0}</a>", escape(tag));
    }
    page.push_str("<a href=\"#schemas\">schemas</a></nav>");
    for (tag, operations) in &by_tag {
        let _ = write!(page, "<h2 id=\"tag-{0}\">{0}</h2>", escape(tag));
        for (path, method, operation) in operations {
            operation_html(&mut page, path, method, operation);
        }
    }
    page.push_str("<h2 id=\"schemas\">Schemas</h2>");
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        schema_html(&mut page, name, schema);
    }
    page.push_str("</main></body></html>");
    page
}

fn operation_html(page: &mut String, path: &str, method: &str, operation: &Value) {
    let id = format!("{method}-{path}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>();
    let _ = write!(
        page,
        "<section class=\"op\" id=\"op-{id}\"><h3><span class=\"method {m}\">{M}</span><span class=\"path\">{p}</span></h3>",
        m = escape(method),
        M = escape(&method.to_uppercase()),
        p = escape(path),
    );
    for field in ["summary", "description"] {
        if let Some(text) = operation[field].as_str() {
            let _ = write!(page, "<p>{}</p>", escape(text));
        }
    }
    if let Some(security) = operation["security"].as_array() {
        let schemes: Vec<String> = security
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|s| s.keys().map(|k| escape(k)))
            .collect();
        if !schemes.is_empty() {
            let _ = write!(
                page,
                "<p>Credential: <code>{}</code></p>",
                schemes.join(", ")
            );
        }
    }
    if let Some(parameters) = operation["parameters"].as_array() {
        page.push_str(
            "<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>",
        );
        for parameter in parameters {
            let required = if parameter["required"] == true {
                " <span class=\"req\">required</span>"
            } else {
                ""
            };
            let _ = write!(
                page,
                "<tr><td><code>{}</code>{required}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(parameter["name"].as_str().unwrap_or("")),
                escape(parameter["in"].as_str().unwrap_or("")),
                type_html(&parameter["schema"]),
                escape(parameter["description"].as_str().unwrap_or("")),
            );
        }
        page.push_str("</table>");
    }
    if let Some(content) = operation["requestBody"]["content"].as_object() {
        for (media, body) in content {
            let _ = write!(
                page,
                "<p>Request body (<code>{}</code>): {}</p>",
                escape(media),
                type_html(&body["schema"])
            );
        }
    }
    page.push_str("<table><tr><th>status</th><th>description</th><th>body</th></tr>");
    for (status, response) in operation["responses"].as_object().into_iter().flatten() {
        let bodies: Vec<String> = response["content"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(media, body)| {
                if body["schema"].is_null() {
                    format!("<code>{}</code>", escape(media))
                } else {
                    type_html(&body["schema"])
                }
            })
            .collect();
        let _ = write!(
            page,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            escape(status),
            escape(response["description"].as_str().unwrap_or("")),
            bodies.join("<br>"),
        );
    }
    page.push_str("</table></section>");
}

fn schema_html(page: &mut String, name: &str, schema: &Value) {
    let _ = write!(
        page,
        "<section class=\"op\" id=\"schema-{0}\"><h3><code>{0}</code></h3>",
        escape(name)
    );
    if let Some(text) = schema["description"].as_str() {
        let _ = write!(page, "<p>{}</p>", escape(text));
    }
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match schema["properties"].as_object() {
        Some(properties) => {
            page.push_str("<table><tr><th>field</th><th>type</th><th>description</th></tr>");
            for (field, property) in properties {
                let mark = if required.contains(&field.as_str()) {
                    " <span class=\"req\">required</span>"
                } else {
                    ""
                };
                let _ = write!(
                    page,
                    "<tr><td><code>{}</code>{mark}</td><td>{}</td><td>{}</td></tr>",
                    escape(field),
                    type_html(property),
                    escape(property["description"].as_str().unwrap_or("")),
                );
            }
            page.push_str("</table>");
        }
        None => {
            let _ = write!(page, "<p>{}</p>", type_html(schema));
        }
    }
    page.push_str("</section>");
}

/// A schema's type in a few words, each reference a link to its schema.
fn type_html(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("<a href=\"#schema-{0}\">{0}</a>", escape(name));
    }
    for combinator in ["oneOf", "anyOf", "allOf"] {
        if let Some(items) = schema[combinator].as_array() {
            let parts: Vec<String> = items.iter().map(type_html).collect();
            return parts.join(if combinator == "allOf" {
                " &amp; "
            } else {
                " | "
            });
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("<code>{}</code>", escape(&v.to_string())))
            .collect();
        return format!("one of {}", values.join(", "));
    }
    let types: Vec<String> = match &schema["type"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let mut text = types
        .iter()
        .map(|t| {
            if t == "array" {
                format!("array of {}", type_html(&schema["items"]))
            } else {
                escape(t)
            }
        })
        .collect::<Vec<_>>()
        .join(" or ");
    if text.is_empty() {
        text = "any".to_owned();
    }
    if let Some(format) = schema["format"].as_str() {
        let _ = write!(text, " ({})", escape(format));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::render;
    use serde_json::json;

    #[test]
    fn operations_schemas_and_links_are_rendered_escaped() {
        let doc = json!({
            "info": {"title": "T <&>", "version": "1", "description": "d"},
            "paths": {"/a/{id}": {"get": {"tags": ["x"], "summary": "<script>",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}}}}}},
            "components": {"schemas": {"Thing": {"type": "object", "required": ["n"],
                "properties": {"n": {"type": ["integer", "null"], "format": "int64"},
                               "tags": {"type": "array", "items": {"$ref": "#/components/schemas/Tag"}},
                               "kind": {"type": "string", "enum": ["a", "b"]}}}}}
        });
        let page = render(&doc);
        assert!(page.contains("T &lt;&amp;&gt;"));
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
        assert!(page.contains("<span class=\"path\">/a/{id}</span>"));
        assert!(page.contains("<a href=\"#schema-Thing\">Thing</a>"));
        assert!(page.contains("id=\"schema-Thing\""));
        assert!(page.contains("integer or null (int64)"));
        assert!(page.contains("array of <a href=\"#schema-Tag\">Tag</a>"));
        assert!(page.contains("one of <code>&quot;a&quot;</code>"));
    }
}
