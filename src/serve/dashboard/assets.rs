//! The dashboard's static files, embedded in the binary: its stylesheet, its script and its icon. Each is served with
//! an ETag (its SHA-256), so a browser asks again on every page but downloads only what changed.

use crate::serve::error::ApiError;
use axum::extract::Path as UrlPath;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/dashboard.css"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/dashboard.js"),
    },
    Asset { name: "icon.svg", content_type: "image/svg+xml", body: include_bytes!("assets/icon.svg") },
];

/// Each asset's ETag, computed once.
fn etags() -> &'static [String; 3] {
    static ETAGS: OnceLock<[String; 3]> = OnceLock::new();
    ETAGS.get_or_init(|| ASSETS.each_ref().map(|a| format!("\"{}\"", crate::time::hex(&Sha256::digest(a.body)[..16]))))
}

pub async fn asset(UrlPath(name): UrlPath<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let index = ASSETS.iter().position(|a| a.name == name).ok_or(ApiError::NoEndpoint)?;
    let (asset, etag) = (&ASSETS[index], &etags()[index]);
    let cache = [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))];
    let etag_header = HeaderValue::from_str(etag).map_err(|e| ApiError::Internal(e.to_string()))?;
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return Ok((StatusCode::NOT_MODIFIED, cache, [(header::ETAG, etag_header)]).into_response());
    }
    let content_type = HeaderValue::from_static(asset.content_type);
    Ok((cache, [(header::ETAG, etag_header), (header::CONTENT_TYPE, content_type)], asset.body).into_response())
}
