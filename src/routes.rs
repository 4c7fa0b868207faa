//! Every endpoint of the API, declared once: its template, its methods, its
//! `route` label in the metrics, whether it needs a bearer token, and
//! whether it moves to `--admin-listen`. The router (`http::app`), the
//! `Allow` header, the 404 message, the index page, the token check and the
//! metrics all read this table; a test holds `openapi.json` to it.
//!
//! No HTTP types here: the metrics use the labels without the web stack.

/// One endpoint. `http::handler` gives each its handlers (an exhaustive
/// match, so a new variant without a handler does not compile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Index,
    Hash,
    HashFile,
    Compress,
    CompressPath,
    Manifest,
    Healthz,
    Readyz,
    Metrics,
    MetricsJson,
    Dashboard,
    OpenApi,
}

/// What the table says of an endpoint.
pub struct Spec {
    /// In OpenAPI spelling; `{path}` takes the rest of the URL path, and the
    /// empty rest (a trailing `/`) reaches the handler too, to be refused
    /// with a message (or, for `/manifest/`, to mean the whole root).
    pub template: &'static str,
    /// GET implies HEAD.
    pub methods: &'static [&'static str],
    /// Its `route` label in the metrics (the two metrics documents share one).
    pub label: Route,
    /// Answered without a token when `--token-file` is set: what a person,
    /// a load balancer or the dashboard page needs before it has one.
    pub open: bool,
    /// Served by `--admin-listen` instead of the main listener, when given.
    pub admin: bool,
}

impl Endpoint {
    pub const ALL: [Endpoint; 12] = [
        Endpoint::Index,
        Endpoint::Hash,
        Endpoint::HashFile,
        Endpoint::Compress,
        Endpoint::CompressPath,
        Endpoint::Manifest,
        Endpoint::Healthz,
        Endpoint::Readyz,
        Endpoint::Metrics,
        Endpoint::MetricsJson,
        Endpoint::Dashboard,
        Endpoint::OpenApi,
    ];

    pub const fn spec(self) -> Spec {
        const GET: &[&str] = &["GET"];
        const POST: &[&str] = &["POST"];
        const BOTH: &[&str] = &["GET", "POST"];
        let (template, methods, label, open, admin) = match self {
            Endpoint::Index => ("/", GET, Route::Index, true, false),
            Endpoint::Hash => ("/hash", POST, Route::Hash, false, false),
            Endpoint::HashFile => ("/hash-file/{path}", GET, Route::HashFile, false, false),
            Endpoint::Compress => ("/compress", POST, Route::Compress, false, false),
            Endpoint::CompressPath => ("/compress/{path}", BOTH, Route::CompressPath, false, false),
            Endpoint::Manifest => ("/manifest/{path}", BOTH, Route::Manifest, false, false),
            Endpoint::Healthz => ("/healthz", GET, Route::Healthz, true, false),
            Endpoint::Readyz => ("/readyz", GET, Route::Readyz, true, false),
            Endpoint::Metrics => ("/metrics", GET, Route::Metrics, false, true),
            Endpoint::MetricsJson => ("/metrics.json", GET, Route::Metrics, false, true),
            // The page itself holds no data; it asks for a token to fetch them.
            Endpoint::Dashboard => ("/dashboard", GET, Route::Dashboard, true, true),
            Endpoint::OpenApi => ("/openapi.json", GET, Route::Other, false, false),
        };
        Spec {
            template,
            methods,
            label,
            open,
            admin,
        }
    }

    /// The endpoint a raw request path belongs to, if any.
    pub fn find(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| {
            let template = e.spec().template;
            match template.strip_suffix("{path}") {
                Some(prefix) => path.starts_with(prefix),
                None => path == template,
            }
        })
    }

    /// `METHOD template` of every endpoint, for answers that list them.
    pub fn listing(sep: &str) -> Vec<String> {
        Endpoint::ALL
            .iter()
            .map(|e| {
                let s = e.spec();
                format!("{} {}", s.methods.join(sep), s.template)
            })
            .collect()
    }
}

/// The `Allow` value for a request path (GET implies HEAD); empty when no
/// endpoint matches.
pub fn allowed_methods(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for m in Endpoint::find(path).map_or(&[][..], |e| e.spec().methods) {
        out.push(m);
        if *m == "GET" {
            out.push("HEAD");
        }
    }
    out.join(", ")
}

/// The `route` label of the request metrics. The metrics keep one set of
/// counters per label in shared memory, so the list is fixed at build time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Index,
    Hash,
    HashFile,
    Compress,
    CompressPath,
    Manifest,
    Metrics,
    Healthz,
    Readyz,
    Dashboard,
    /// No endpoint matched (404), or one without a label of its own.
    Other,
}

impl Route {
    pub const ALL: [Route; 11] = [
        Route::Index,
        Route::Hash,
        Route::HashFile,
        Route::Compress,
        Route::CompressPath,
        Route::Manifest,
        Route::Metrics,
        Route::Healthz,
        Route::Readyz,
        Route::Dashboard,
        Route::Other,
    ];

    /// The label's value: the template of the first endpoint that carries
    /// it, `other` for the rest.
    pub fn template(self) -> &'static str {
        Endpoint::ALL
            .into_iter()
            .map(Endpoint::spec)
            .find(|s| s.label == self && self != Route::Other)
            .map_or("other", |s| s.template)
    }

    /// The label of a raw request path.
    pub fn classify(path: &str) -> Route {
        Endpoint::find(path).map_or(Route::Other, |e| e.spec().label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_endpoint_and_label() {
        assert_eq!(Endpoint::find("/hash"), Some(Endpoint::Hash));
        assert_eq!(Endpoint::find("/hash/"), None);
        assert_eq!(Endpoint::find("/hash-file/a/b"), Some(Endpoint::HashFile));
        assert_eq!(Endpoint::find("/hash-file/"), Some(Endpoint::HashFile));
        assert_eq!(Endpoint::find("/compress"), Some(Endpoint::Compress));
        assert_eq!(Endpoint::find("/compress/x"), Some(Endpoint::CompressPath));
        assert_eq!(Route::classify("/metrics.json"), Route::Metrics);
        assert_eq!(Route::classify("/openapi.json"), Route::Other);
        assert_eq!(Route::classify("/nowhere"), Route::Other);
        assert_eq!(allowed_methods("/compress/x"), "GET, HEAD, POST");
        assert_eq!(allowed_methods("/nowhere"), "");
    }

    /// Every label but `other` is some endpoint's, with its template as value.
    #[test]
    fn every_label_names_an_endpoint() {
        for route in Route::ALL {
            let value = route.template();
            match route {
                Route::Other => assert_eq!(value, "other"),
                _ => assert_eq!(Route::classify(&value.replace("{path}", "x")), route),
            }
        }
    }
}
