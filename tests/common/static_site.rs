//! A static web site on its own loopback port: the "other origin" a browser test loads its
//! page from. Bound before the gateways start, so its origin (`http://127.0.0.1:PORT`) can be
//! put in their GATEWAY_CORS_ORIGINS without a race for the port.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Files served: a URL path → file map, then a directory (if any) for every other path.
struct Files {
    mapped: Vec<(String, PathBuf)>,
    root: Option<PathBuf>,
}

/// A running static site; stops when dropped.
pub struct StaticSite {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl StaticSite {
    /// Serves `mapped` (URL path → file) and, for other paths, files under `root`
    /// (`/` → `index.html`). Must be called inside a Tokio runtime.
    pub async fn start(mapped: &[(&str, PathBuf)], root: Option<PathBuf>) -> StaticSite {
        Self::start_with(axum::Router::new(), mapped, root).await
    }

    /// Like [`StaticSite::start`], with `routes` (e.g. a test API) answered before the files.
    pub async fn start_with(
        routes: axum::Router,
        mapped: &[(&str, PathBuf)],
        root: Option<PathBuf>,
    ) -> StaticSite {
        for (url, file) in mapped {
            assert!(file.is_file(), "{url}: {} does not exist", file.display());
        }
        let files = Arc::new(Files {
            mapped: mapped
                .iter()
                .map(|(u, f)| (u.to_string(), f.clone()))
                .collect(),
            root,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the static site");
        let addr = listener.local_addr().expect("local addr");
        let app = routes.merge(axum::Router::new().fallback(serve).with_state(files));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StaticSite { addr, task }
    }

    /// `http://127.0.0.1:PORT`: what a browser sends as `Origin` from this site's pages.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `path` on this site.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

async fn serve(State(files): State<Arc<Files>>, req: Request) -> Response {
    let path = req.uri().path();
    let file = match files.mapped.iter().find(|(u, _)| u == path) {
        Some((_, f)) => Some(f.clone()),
        None => files.root.as_ref().and_then(|root| {
            let rel = Path::new(path.trim_start_matches('/'));
            // Only plain names below the root: no `..`, no absolute paths.
            if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                return None;
            }
            let f = root.join(rel);
            Some(if f.is_dir() { f.join("index.html") } else { f })
        }),
    };
    match file {
        Some(f) => match tokio::fs::read(&f).await {
            Ok(bytes) => (
                [
                    (header::CONTENT_TYPE, content_type(&f)),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                bytes,
            )
                .into_response(),
            Err(_) => StatusCode::NOT_FOUND.into_response(),
        },
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
